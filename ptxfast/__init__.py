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
