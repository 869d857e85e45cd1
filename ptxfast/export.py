"""Export: a trained model → one fused graph (TorchScript, or TensorRT FP16) → a verified artifact.

`export_model(ExportConfig(...))` reads `runs/<name>/best.pt` (weights only, no code runs), fuses
the model (`ptxfast.fused`), traces and freezes it or compiles it with TensorRT, saves it to a
temporary file, loads that file back and runs it against the eager fp32 model on the validation
split (or fresh synthetic phantoms) — the parity gate. Only an artifact inside the tolerances is
moved into place with its sidecar (`ptxfast.artifact`); anything else leaves no file behind.

Profiles (`export/*.toml`) name a backend, precision, device and batch range; command-line
options override them. Defaults: TensorRT where it can run, else TorchScript (said in one line);
fp16 on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptxfast import MODEL_NAMES, __version__, read_toml, shipped_dir, shipped_toml
from ptxfast.artifact import EXTENSIONS, stem, utc_now, write_artifact
from ptxfast.checkpoint import CheckpointError, load_checkpoint, sha256_file
from ptxfast.fused import (
    PRECISIONS,
    FusedError,
    fuse,
    graph_precision,
    quiet_jit,
    thresholds,
    to_torchscript,
)
from ptxfast.models import build, cascade_parts, kind_of
from ptxfast.runtime import (
    Predictor,
    PredictorError,
    check_precision,
    resolve_device,
)

PROFILE_DIR = shipped_dir("export")
BACKENDS = ("tensorrt", "torchscript")
DEFAULT_BATCH = (1, 8, 32)
DEFAULT_PARITY_N = 200  # synthetic phantoms when there is no validation split


class ExportError(ValueError):
    """An export that cannot run or did not pass; the message says what to do."""


class ParityError(ExportError):
    """The artifact's outputs are outside the tolerances against eager fp32; nothing was written."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


@dataclass(frozen=True)
class Tolerance:
    """How far an artifact may be from the eager fp32 model on the parity data."""

    min_agreement: float  # share of images whose label equals eager fp32's
    max_df1: float  # |F1(artifact) − F1(eager)|, both against the ground-truth labels
    max_dprob: float  # max |prob(artifact) − prob(eager)| over the images
    max_drecall: float | None = None  # |Δrecall| vs ground truth; None: reported, not gated


# fp32: the same arithmetic reordered (fusion, folded BatchNorm): differences near float
# rounding. fp16: 10-bit mantissa, ~1e-3 relative per op; 0.02 on a probability leaves labels
# stable away from the threshold. bf16 keeps 8 bits (7 stored), 8x coarser per rounding than fp16.
# Measured on a quick-recipe eb3un+eb3 trained here (64², 6 epochs, phantoms; logits -6..8):
# max |Δprob| 0.092 on its 42-image validation split (one label of 42 flipped, ΔF1 -0.007) and
# 0.136 on 200 phantoms (2 of 200 flipped, ΔF1 0, mean |Δprob| 0.02); its eb3un segmenter moved
# by 0.002. So bf16 is gated on what matters — labels (99%) and F1 (0.02) — with a Δprob bound
# that admits that rounding but still fails a broken cast or layout (errors of 0.3 to 1).
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(min_agreement=0.995, max_df1=0.01, max_dprob=1e-4),
    "fp16": Tolerance(min_agreement=0.995, max_df1=0.01, max_dprob=0.02),
    "bf16": Tolerance(min_agreement=0.99, max_df1=0.02, max_dprob=0.15),
}


@dataclass
class ExportConfig:
    """One export: which model, where from and to, and how. None fields take the profile's
    value, then the default."""

    name: str  # one of the eight model names
    runs: Path = Path("runs")  # checkpoints: <runs>/<name>/best.pt
    out: Path = Path("exports")  # artifacts go here
    checkpoint: Path | None = None  # a specific checkpoint instead of <runs>/<name>/best.pt
    backend: str | None = None  # tensorrt | torchscript; None: tensorrt where it can run
    precision: str | None = None  # fp16 | bf16 | fp32; None: fp16 on CUDA, fp32 on CPU
    batch: tuple[int, int, int] | None = None  # (min, opt, max) batch the artifact serves
    size: int | None = None  # input side; None: the checkpoint's training size
    device: str | None = None  # cpu | cuda | cuda:N | auto
    data: Path | None = None  # labelled dataset for the gate; None: the recipe's, else phantoms
    profile: str | None = None  # a name in export/ or a .toml path
    return_mask: bool | None = None  # the artifact also returns the N×1×S×S mask
    parity_n: int = DEFAULT_PARITY_N  # phantoms drawn when there is no dataset
    seed: int = 0  # phantoms and random example inputs
    # Tolerance overrides (None: the precision's default in DEFAULT_TOLERANCES).
    min_agreement: float | None = None
    max_df1: float | None = None
    max_dprob: float | None = None
    max_drecall: float | None = None


@dataclass
class ExportResult:
    """What `export_model` made."""

    sidecar_path: Path
    model_path: Path
    sidecar: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # one-line choices made on the user's behalf
    seconds: float = 0.0


# ------------------------------------------------------------------------------------ profiles


def profile_path(profile: str | Path) -> Path:
    """`cpu-fp32` (a profile in export/) or a path to a .toml file."""
    try:
        return shipped_toml(profile, "export", "profile")
    except FileNotFoundError as err:
        raise ExportError(str(err)) from None


_PROFILE_KEYS = ("backend", "precision", "device", "batch", "size", "return_mask", "tolerance")
_TOLERANCE_KEYS = ("min_agreement", "max_df1", "max_dprob", "max_drecall")


def load_profile(profile: str | Path) -> dict[str, Any]:
    """A profile's settings as ExportConfig field values (batch parsed, tolerances flattened)."""
    path = profile_path(profile)
    try:
        doc = read_toml(path)
    except ValueError as err:
        raise ExportError(str(err)) from None
    unknown = set(doc) - set(_PROFILE_KEYS) - {"description"}
    if unknown:
        raise ExportError(f"{path}: unknown key(s) {sorted(unknown)}; known: {_PROFILE_KEYS}")
    values = {k: v for k, v in doc.items() if k in _PROFILE_KEYS and k != "tolerance"}
    if "batch" in values:
        values["batch"] = parse_batch(str(values["batch"]))
    tol = doc.get("tolerance", {})
    bad = set(tol) - set(_TOLERANCE_KEYS)
    if bad:
        raise ExportError(f"{path}: unknown tolerance(s) {sorted(bad)}; known: {_TOLERANCE_KEYS}")
    values.update({k: float(v) for k, v in tol.items()})
    return values


def parse_batch(text: str) -> tuple[int, int, int]:
    """ "1:8:32" → (1, 8, 32); a single number N means N:N:N."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise ExportError(f"batch {text!r} must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX")
    return parts[0], parts[1], parts[2]


# ------------------------------------------------------------------------------------ the plan


def cpu_bf16() -> str | None:
    """The CPU's native bf16 support (e.g. "avx512_bf16, amx_bf16"), or None without it."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    found = [f for f in ("avx512_bf16", "amx_bf16", "bf16") if f in flags]
    return ", ".join(found) or None


@dataclass
class Plan:
    """The resolved choices of one export."""

    name: str
    kind: str
    device: torch.device
    backend: str
    precision: str
    batch: tuple[int, int, int]
    return_mask: bool
    tolerance: Tolerance
    notes: list[str]


def plan(cfg: ExportConfig) -> Plan:
    """Resolve profile, options and defaults into one `Plan`; refuse what cannot run here."""
    from ptxfast import trt

    if cfg.name not in MODEL_NAMES:
        raise ExportError(f"unknown model {cfg.name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if cfg.profile:  # the profile fills what the options left open
        profile = load_profile(cfg.profile)
        cfg = replace(cfg, **{k: v for k, v in profile.items() if getattr(cfg, k) is None})
    notes: list[str] = []
    try:
        device = resolve_device(cfg.device or "auto")
    except PredictorError as err:
        raise ExportError(str(err)) from None
    precision = cfg.precision or ("fp16" if device.type == "cuda" else "fp32")
    backend = cfg.backend
    reason = trt.unavailable_reason(device)
    if backend is None and precision == "bf16":
        backend = "torchscript"  # TensorRT engines here are fp16 / fp32
    elif backend is None:
        backend = "tensorrt" if reason is None else "torchscript"
        if reason is not None:
            notes.append(f"backend torchscript: {reason.split('. Use --backend')[0]}")
    elif backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    elif backend == "tensorrt" and reason is not None:
        raise ExportError(
            reason if "Use --backend" in reason else f"{reason}. Use --backend torchscript."
        )
    try:
        check_precision(backend, precision, device)
    except PredictorError as err:
        raise ExportError(str(err)) from None
    bf16 = cpu_bf16()
    if device.type == "cpu" and precision == "bf16" and not bf16:
        notes.append("this CPU has no bf16 units: the bf16 artifact runs emulated here (slow)")
    if device.type == "cpu" and precision == "fp32" and bf16 and cfg.precision is None:
        notes.append(
            f"this CPU has bf16 units ({bf16}): --profile cpu-bf16 runs several times faster"
        )
    kind = kind_of(cfg.name)
    return_mask = bool(cfg.return_mask)
    if return_mask and kind == "classifier":
        raise ExportError(f"{cfg.name} is a classifier and has no mask; drop --return-mask")
    base = DEFAULT_TOLERANCES[precision]
    tolerance = Tolerance(
        min_agreement=_pick(cfg.min_agreement, base.min_agreement),
        max_df1=_pick(cfg.max_df1, base.max_df1),
        max_dprob=_pick(cfg.max_dprob, base.max_dprob),
        max_drecall=_pick(cfg.max_drecall, base.max_drecall),
    )
    batch = cfg.batch or DEFAULT_BATCH
    return Plan(cfg.name, kind, device, backend, precision, batch, return_mask, tolerance, notes)


def _pick(value, default):
    return default if value is None else value


# ------------------------------------------------------------------------------- parity data


def _phantom_image(i: int, size: int, seed: int) -> tuple[np.ndarray, int]:
    """Phantom i (every sixth positive, the validation split's 1 : 5) as [0, 1] at size²."""
    from ptxfast.data.dicom import resize
    from ptxfast.data.phantom import make_phantom

    rng = np.random.default_rng([seed, i, 0xE4])
    label = int(i % 6 == 0)
    # Drawn at least at 256² (where the anatomy is resolved) and area-resized like the dataset.
    image, _, _ = make_phantom(rng, max(size, 256), label)
    # The window the dataset writer stores: body percentiles, so the [0, 1] range matches.
    lo, hi = np.percentile(image[::7, ::7].astype(np.float32), [0.2, 99.9])
    hi = max(hi, lo + 64.0)
    scaled = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return resize(scaled, size) if scaled.shape[0] != size else scaled, label


def phantom_batches(
    n: int, size: int, batch: int, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`n` labelled synthetic radiographs at size², in memory, as (images N×1×S×S, labels N)."""
    for start in range(0, n, batch):
        items = [_phantom_image(i, size, seed) for i in range(start, min(n, start + batch))]
        x = torch.from_numpy(np.stack([im for im, _ in items]))[:, None]
        yield x, torch.tensor([lab for _, lab in items], dtype=torch.float32)


def dataset_batches(
    root: Path, size: int, batch: int, seed: int = 0
) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
    """The validation split of `root` at size² as (images, labels) batches, and its length."""
    from ptxfast.data.datasets import DatasetError, PTXDataset, ensure_splits

    try:
        records = ensure_splits(root, seed=seed)["val"]
    except (DatasetError, OSError) as err:
        raise ExportError(f"cannot read the validation split of {root}: {err}") from None
    if not records:
        raise ExportError(f"{root} has no validation images; pass another --data or none")
    ds = PTXDataset(records, size, with_mask=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=0)
    return ((x, y) for x, _, y in loader), len(ds)


def _parity_source(cfg: ExportConfig, state: dict[str, Any], size: int, batch: int):
    """(batches, description): --data, else the recipe's dataset if it is here, else phantoms."""
    recipe = state.get("recipe") or {}
    seed = int(recipe.get("seed", 0) or 0)
    data = cfg.data
    if data is None and recipe.get("data") and Path(recipe["data"]).is_dir():
        data = Path(recipe["data"])
    if data is not None:
        data = Path(data)
        if not data.is_dir():
            raise ExportError(f"--data {data} is not a folder; pass a dataset folder or none")
        batches, n = dataset_batches(data, size, batch, seed)
        return batches, {"source": "validation split", "data": str(data), "n_planned": n}
    n = cfg.parity_n
    return phantom_batches(n, size, batch, cfg.seed), {
        "source": "synthetic phantoms",
        "seed": cfg.seed,
        "n_planned": n,
    }


# ------------------------------------------------------------------------------- parity gate


@contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off while measuring: the eager reference must be true fp32 on Ampere and newer."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def measure_parity(
    candidate: Predictor,
    reference: Predictor,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, Any]:
    """Run both predictors over labelled batches; figures of the candidate against the reference.

    agreement: share of equal labels; f1/recall of each against the ground truth and their
    differences (candidate − reference); max and mean |Δprob|; max |Δarea| where there are masks.
    """
    from sklearn.metrics import f1_score, recall_score

    probs_c, probs_r, areas_c, areas_r, labels = [], [], [], [], []
    with strict_fp32():
        for x, y in batches:
            c, r = candidate(x), reference(x)
            probs_c.append(c.prob.float().cpu())
            probs_r.append(r.prob.float().cpu())
            areas_c.append(c.area.cpu())
            areas_r.append(r.area.cpu())
            labels.append(y.flatten().cpu())
    if not labels:
        raise ExportError("no parity data (0 images); pass --data DIR or a positive --parity-n")
    pc, pr = torch.cat(probs_c), torch.cat(probs_r)
    y = torch.cat(labels).numpy().astype(int)
    lc = candidate.label(pc).numpy().astype(int)
    lr = reference.label(pr).numpy().astype(int)
    f1_c, f1_r = (float(f1_score(y, lab, zero_division=0)) for lab in (lc, lr))
    rec_c, rec_r = (float(recall_score(y, lab, zero_division=0)) for lab in (lc, lr))
    dprob = (pc - pr).abs()
    finite = bool(torch.isfinite(pc).all())
    figures: dict[str, Any] = {
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "agreement": float((lc == lr).mean()),
        "f1_reference": f1_r,
        "f1_artifact": f1_c,
        "delta_f1": f1_c - f1_r,
        "recall_reference": rec_r,
        "recall_artifact": rec_c,
        "delta_recall": rec_c - rec_r,
        "max_abs_delta_prob": float(dprob.max()) if finite else math.inf,
        "mean_abs_delta_prob": float(dprob.mean()) if finite else math.inf,
    }
    ac, ar = torch.cat(areas_c), torch.cat(areas_r)
    if (ar >= 0).any():
        figures["max_abs_delta_area"] = int((ac.long() - ar.long()).abs().max())
    return figures


def gate(figures: dict[str, Any], tolerance: Tolerance) -> list[str]:
    """The tolerances `figures` break, as readable phrases (empty: the artifact passes)."""
    failed = []
    if not figures["agreement"] >= tolerance.min_agreement:
        failed.append(f"label agreement {figures['agreement']:.2%} < {tolerance.min_agreement:.2%}")
    if not abs(figures["delta_f1"]) <= tolerance.max_df1:
        failed.append(f"|ΔF1| {abs(figures['delta_f1']):.4f} > {tolerance.max_df1:g}")
    if (
        tolerance.max_drecall is not None
        and not abs(figures["delta_recall"]) <= tolerance.max_drecall
    ):
        failed.append(f"|Δrecall| {abs(figures['delta_recall']):.4f} > {tolerance.max_drecall:g}")
    if not figures["max_abs_delta_prob"] <= tolerance.max_dprob:
        failed.append(f"max |Δprob| {figures['max_abs_delta_prob']:.3g} > {tolerance.max_dprob:g}")
    return failed


# -------------------------------------------------------------------------------- the export


def _checkpoint_path(cfg: ExportConfig) -> Path:
    path = Path(cfg.checkpoint) if cfg.checkpoint else Path(cfg.runs) / cfg.name / "best.pt"
    if not path.is_file():
        raise ExportError(
            f"no checkpoint {path} for {cfg.name}; train it with `ptxfast train --arch "
            f"{cfg.name}`, or pass --runs DIR / --checkpoint PATH"
        )
    return path


def _load_model(path: Path, name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The fp32 eval model of a checkpoint, read with weights_only (pickled code is refused)."""
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise ExportError(str(err)) from None
    saved = state["model_args"].get("name")
    if saved != name:
        raise ExportError(f"{path} holds {saved!r}, not {name!r}; pass the {name} checkpoint")
    model = build(name, weights=None)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ExportError(f"{path}: weights do not fit {name} ({first}); retrain it") from None
    return model.eval(), state


def _sources(path: Path, state: dict[str, Any], name: str, runs: Path) -> dict[str, Any]:
    """The checkpoints the artifact came from, by sha256 (a cascade's segmenter too)."""
    out: dict[str, Any] = {"checkpoint": {"path": str(path), "sha256": sha256_file(path)}}
    if kind_of(name) == "cascade":
        recipe = state.get("recipe") or {}
        seg_path = Path(recipe.get("segmenter_path") or runs / cascade_parts(name)[0] / "best.pt")
        recorded = recipe.get("segmenter_sha256")
        current = sha256_file(seg_path) if seg_path.is_file() else None
        out["segmenter_checkpoint"] = {
            "path": str(seg_path),
            # What the cascade was trained on; the cascade checkpoint carries those weights.
            "sha256": recorded or current,
            "sha256_on_disk": current,
            "matches_training": None if not (recorded and current) else recorded == current,
        }
    return out


_RECIPE_KEYS = (
    "arch", "data", "size", "epochs", "batch_size", "lr", "weights", "freezing",
    "freezing_applied", "rotate_every", "select", "seed", "amp",
)  # fmt: skip


def _recipe_summary(state: dict[str, Any]) -> dict[str, Any]:
    recipe = state.get("recipe") or {}
    out = {k: recipe[k] for k in _RECIPE_KEYS if k in recipe}
    out.update(
        epoch=state.get("epoch"),
        metric=state.get("metric"),
        best_epoch=state.get("best_epoch"),
        checkpoint_version=state.get("version"),
    )
    return {k: v for k, v in out.items() if v is not None}


def _versions(device: torch.device) -> dict[str, Any]:
    from ptxfast import trt

    cuda = device.type == "cuda"
    return {
        "ptxfast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        **trt.versions(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_bf16(),
    }


def _outputs(kind: str, size: int, return_mask: bool) -> list[dict[str, Any]]:
    out = [
        {"name": "prob", "dtype": "float32", "shape": ["N"]},
        {
            "name": "area",
            "dtype": "int32",
            "shape": ["N"],
            "note": "pixels above the pixel threshold" if kind != "classifier" else "-1: no mask",
        },
    ]
    if return_mask:
        out.append({"name": "mask", "dtype": "float32", "shape": ["N", 1, size, size]})
    return out


def export_model(cfg: ExportConfig, say: Callable[[str], None] = lambda _: None) -> ExportResult:
    """Export one model per `cfg`; returns where the artifact and its sidecar are.

    Raises ExportError (ParityError when the gate fails) with nothing written to `cfg.out`.
    """
    start = time.perf_counter()
    p = plan(cfg)
    for note in p.notes:
        say(note)
    ckpt = _checkpoint_path(cfg)
    model, state = _load_model(ckpt, cfg.name)
    size = cfg.size or int(state["model_args"].get("size") or 0)
    if not size:
        raise ExportError(f"{ckpt} records no training size; pass --size")
    dtype = PRECISIONS[p.precision]
    try:
        reference = Predictor(
            fuse(model, p.name, size, device=p.device, return_mask=p.return_mask),
            name=p.name, size=size, backend="eager", precision="fp32", device=p.device,
            path="eager",
        )  # fmt: skip
        candidate = fuse(
            model, p.name, size, precision=p.precision, device=p.device, return_mask=p.return_mask
        )
    except FusedError as err:
        raise ExportError(str(err)) from None

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ext = EXTENSIONS["torchscript"]
    tmp = out / f".{stem(p.name, p.backend, p.precision)}.{os.getpid()}.tmp"
    try:
        say(
            f"{p.name}: {'tracing' if p.backend == 'torchscript' else 'compiling'} at {size}² {p.precision} on {p.device}"
        )
        if p.backend == "torchscript":
            try:
                scripted = to_torchscript(candidate, p.batch, p.device)
            except FusedError as err:
                raise ExportError(str(err)) from None
            with quiet_jit():
                torch.jit.save(scripted, str(tmp))
                loaded = torch.jit.load(str(tmp), map_location=p.device).eval()
            path = "trace"
            actual, weights = graph_precision(loaded)
            precision_source = "dtype of the frozen graph's weight constants"
        else:
            from ptxfast import trt

            compiled = trt.compile_fused(
                candidate, size=size, batch=p.batch, device=p.device, dtype=dtype
            )
            ext = compiled.ext
            with open(tmp, "wb") as f:  # a file object: exported programs want .pt2 names
                compiled.save(f)
            loaded = trt.load(tmp, compiled.path, p.device)
            path, actual, precision_source = (
                compiled.path,
                compiled.precision,
                compiled.precision_source,
            )
            weights = {}
        artifact = Predictor(
            loaded, name=p.name, size=size, backend=p.backend, precision=p.precision,
            device=p.device, input_dtype=dtype, batch=p.batch, return_mask=p.return_mask,
            path=path,
        )  # fmt: skip

        batches, source = _parity_source(cfg, state, size, p.batch[1])
        say(
            f"{p.name}: parity against eager fp32 on {source['source']} ({source['n_planned']} images)"
        )
        figures = measure_parity(artifact, reference, batches)
        failed = gate(figures, p.tolerance)
        parity = {
            **source,
            **figures,
            "tolerance": asdict(p.tolerance),
            "passed": not failed,
        }
        if failed:
            raise ParityError(
                f"parity gate failed for {p.name} ({p.backend} {p.precision}): "
                f"{'; '.join(failed)} (n={figures['n']}); no artifact written. Export at a wider "
                "precision, or loosen the tolerance (--min-agreement, --max-df1, --max-dprob) if "
                "you accept the difference",
                parity,
            )
        final = out / f"{stem(p.name, p.backend, p.precision)}.{ext}"
        sidecar = {
            "name": p.name,
            "kind": p.kind,
            "input": {
                "shape": ["N", 1, size, size],
                "size": size,
                "dtype": str(dtype).replace("torch.", ""),
                "range": [0.0, 1.0],
                "channels_last": True,
            },
            "batch": dict(zip(("min", "opt", "max"), p.batch, strict=True)),
            "thresholds": thresholds(p.kind, size),
            "backend": p.backend,
            "path": path,
            "precision": {
                "requested": p.precision,
                "actual": actual,
                "source": precision_source,
                **({"weight_elements": weights} if weights else {}),
            },
            "return_mask": p.return_mask,
            "outputs": _outputs(p.kind, size, p.return_mask),
            "device": p.device.type,
            "versions": _versions(p.device),
            "created": utc_now(),
            "sources": _sources(ckpt, state, p.name, Path(cfg.runs)),
            "recipe": _recipe_summary(state),
            "parity": parity,
        }
        side = write_artifact(tmp, final, sidecar)
    finally:
        tmp.unlink(missing_ok=True)
    from ptxfast.artifact import read_sidecar

    return ExportResult(
        sidecar_path=side,
        model_path=final,
        sidecar=read_sidecar(side),
        notes=p.notes,
        seconds=time.perf_counter() - start,
    )


__all__ = [
    "DEFAULT_TOLERANCES",
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "ParityError",
    "Plan",
    "Tolerance",
    "export_model",
    "gate",
    "load_profile",
    "measure_parity",
    "parse_batch",
    "phantom_batches",
    "plan",
]
