"""ptxfast: pneumothorax detection on chest X-rays, fast enough to triage a backlog."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# The eight model names are part of the interface (see models.py).
CLASSIFIERS = ("rn34", "eb3")
SEGMENTERS = ("rn34un", "eb3un")
CASCADES = ("rn34un+rn34", "rn34un+eb3", "eb3un+rn34", "eb3un+eb3")
MODEL_NAMES = CLASSIFIERS + SEGMENTERS + CASCADES


def shipped_dir(name: str) -> _Path:
    """`train` (recipes) or `export` (profiles): the folder installed with the package
    (ptxfast._train / ptxfast._export, mapped onto the checkout's folders by an editable
    install), else the source checkout's own folder."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(f"ptxfast._{name}")
    except ImportError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if _Path(location).is_dir():
            return _Path(location)
    return _Path(__file__).resolve().parent.parent / name


def shipped_toml(spec: str | _Path, folder: str, what: str) -> _Path:
    """A `.toml` named bare (`paper`, `cpu-fp32`: a file in the shipped `folder`, see
    `shipped_dir`) or by its path; FileNotFoundError, naming the choices, when there is none."""
    text = str(spec)
    bare = "/" not in text and not text.endswith(".toml")
    path = shipped_dir(folder) / f"{text}.toml" if bare else _Path(text)
    if not path.is_file():
        known = sorted(p.stem for p in shipped_dir(folder).glob("*.toml"))
        raise FileNotFoundError(
            f"{what} {text!r} not found; use one of {known} or a path to a .toml file"
        )
    return path


def read_toml(path: _Path) -> dict:
    """A TOML file's tables; ValueError naming the file when it cannot be read or parsed."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{path} is not a readable TOML file: {err}") from None
