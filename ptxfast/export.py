"""Export: a trained model → one fused graph (TorchScript, TensorRT FP16, ONNX) → a verified artifact.

`export_model(ExportConfig(...))` reads `runs/<name>/best.pt` (weights only, no code runs), fuses
the model (`ptxfast.fused`), traces and freezes it or compiles it with TensorRT, saves it to a
temporary file, loads that file back and runs it against the eager fp32 model on the validation
split (or fresh synthetic phantoms) — the parity gate. Only an artifact inside the tolerances is
moved into place with its sidecar (`ptxfast.artifact`); anything else leaves no file behind.

Profiles (`export/*.toml`) name a backend, precision, device and batch range; command-line
options override them. Defaults: on CUDA, TensorRT where it can run, else TorchScript (said in
one line), fp16. On a CPU with no backend given, every candidate that runs here
(`CPU_CANDIDATES`: TorchScript fp32 / bf16, ONNX Runtime fp32, OpenVINO fp32 / bf16; bf16 only
with bf16 units, one precision when --precision names it) is built, gated and timed for a few
interleaved calls at the artifact's optimal batch, and the fastest one that passes its gate is
written (`choose_default`); the table of all of them goes into its sidecar (`selection`).

ONNX artifacts (`--backend onnxruntime`, alias `onnx`, or `openvino`) are the fp32 fused graph
as one `.onnx` file (`ptxfast.onnx_graph`): `<name>.onnx-fp32.onnx` for ONNX Runtime, and
`<name>.openvino-<precision>.onnx` for OpenVINO, whose bf16 is a runtime precision (the
inference-precision hint) over the same fp32 bytes, gated as bf16.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptxfast import MODEL_NAMES, cpu_fusion, read_toml, shipped_dir, shipped_toml
from ptxfast.artifact import EXTENSIONS, file_stem, utc_now, write_artifact
from ptxfast.checkpoint import CheckpointError, load_checkpoint, sha256_file
from ptxfast.environment import DeviceError, cpu_bf16, resolve_device, versions
from ptxfast.fused import (
    PRECISIONS,
    TTAS,
    FusedError,
    fuse,
    graph_precision,
    quiet_jit,
    thresholds,
    to_torchscript,
)
from ptxfast.metrics import dice_from_counts, parity
from ptxfast.models import PIXEL_THRESHOLD, build, cascade_parts, kind_of
from ptxfast.operating import LabelRule, OperatingPointError, describe, label_rule
from ptxfast.operating import resolve as resolve_operating_point
from ptxfast.runtime import (
    ONNX_BACKENDS,
    Predictor,
    PredictorError,
    available_backends,
    check_precision,
)

PROFILE_DIR = shipped_dir("export")
BACKENDS = ("tensorrt", "torchscript", "onnxruntime", "openvino")
BACKEND_ALIASES = {"onnx": "onnxruntime"}
# What `ptxfast export` on a CPU tries when no backend is given, in this order (ties keep the
# earlier one). bf16 ones only on CPUs with bf16 units.
CPU_CANDIDATES = (
    ("torchscript", "fp32"),
    ("torchscript", "bf16"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
)
SELECTION_CALLS = 5  # timed calls of each candidate (after 2 warm-up calls), interleaved
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
    max_dauc: float | None = None  # |ΔROC-AUC| vs ground truth; None: reported, not gated
    max_ddice: float | None = None  # |Δ mean Dice| of the masks vs ground truth (masks only)


# fp32: the same arithmetic reordered (fusion, folded BatchNorm): differences near float
# rounding. fp16: 10-bit mantissa, ~1e-3 relative per op; 0.02 on a probability leaves labels
# stable away from the threshold. bf16 keeps 8 bits (7 stored), 8x coarser per rounding than fp16.
# Measured on a quick-recipe eb3un+eb3 trained here (64², 6 epochs, phantoms; logits -6..8):
# max |Δprob| 0.092 on its 42-image validation split (one label of 42 flipped, ΔF1 -0.007) and
# 0.136 on 200 phantoms (2 of 200 flipped, ΔF1 0, mean |Δprob| 0.02); its eb3un segmenter moved
# by 0.002. So bf16 is gated on what matters — labels (99%) and F1 (0.02) — with a Δprob bound
# that admits that rounding but still fails a broken cast or layout (errors of 0.3 to 1).
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(0.995, max_df1=0.01, max_dprob=1e-4, max_dauc=0.01, max_ddice=0.01),
    "fp16": Tolerance(0.995, max_df1=0.01, max_dprob=0.02, max_dauc=0.01, max_ddice=0.01),
    "bf16": Tolerance(0.99, max_df1=0.02, max_dprob=0.15, max_dauc=0.02, max_ddice=0.02),
}


@dataclass
class ExportConfig:
    """One export: which model, where from and to, and how. None fields take the profile's
    value, then the default."""

    name: str  # one of the eight model names
    runs: Path = Path("runs")  # checkpoints: <runs>/<name>/best.pt
    out: Path = Path("exports")  # artifacts go here
    checkpoint: Path | None = None  # a specific checkpoint instead of <runs>/<name>/best.pt
    # tensorrt | torchscript | onnxruntime (onnx) | openvino; None: tensorrt where it can run on
    # CUDA, on a CPU the fastest of CPU_CANDIDATES that passes the gate
    backend: str | None = None
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
    max_dauc: float | None = None
    max_ddice: float | None = None
    # How the artifact labels: "recall=0.95" (the threshold `ptxfast evaluate` chose on
    # validation), "threshold=0.37", "calibrated"; None: the model's default rule.
    operating_point: str | None = None
    tta: str = "none"  # "hflip": average each image with its mirror inside the graph
    n_boot: int = 2000  # bootstrap resamples behind the operating point's validation CIs


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
_TOLERANCE_KEYS = ("min_agreement", "max_df1", "max_dprob", "max_drecall", "max_dauc", "max_ddice")


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


@dataclass
class Plan:
    """The resolved choices of one export. `candidates` lists the (backend, precision) pairs to
    build; with more than one (a CPU export without --backend) the fastest that passes its gate
    is kept, and `backend`, `precision`, `tolerance` are those of the first."""

    name: str
    kind: str
    device: torch.device
    backend: str
    precision: str
    batch: tuple[int, int, int]
    return_mask: bool
    tolerance: Tolerance
    notes: list[str]
    candidates: list[tuple[str, str]] = field(default_factory=list)
    tolerances: dict[str, Tolerance] = field(default_factory=dict)  # by precision
    tta: str = "none"  # test-time augmentation inside the graph (fused.TTAS)
    rule: LabelRule | None = None  # how the artifact labels (its operating point)


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
    except DeviceError as err:
        raise ExportError(str(err)) from None
    precision = cfg.precision or ("fp16" if device.type == "cuda" else "fp32")
    backend = BACKEND_ALIASES.get(cfg.backend, cfg.backend) if cfg.backend else None
    reason = trt.unavailable_reason(device)
    bf16 = cpu_bf16()
    if backend is None and device.type == "cpu":
        candidates = _cpu_candidates(cfg.precision, bf16, notes)
    elif backend is None and precision == "bf16":
        candidates = [("torchscript", precision)]  # TensorRT engines here are fp16 / fp32
    elif backend is None:
        candidates = [("tensorrt" if reason is None else "torchscript", precision)]
        if reason is not None:
            notes.append(f"backend torchscript: {reason.split('. Use --backend')[0]}")
    elif backend not in BACKENDS:
        choices = ", ".join([*BACKENDS, *BACKEND_ALIASES])
        raise ExportError(f"unknown backend {backend!r}; choose one of {choices}")
    elif backend == "tensorrt" and reason is not None:
        raise ExportError(
            reason if "Use --backend" in reason else f"{reason}. Use --backend torchscript."
        )
    else:
        candidates = [(backend, precision)]
    if len(candidates) == 1:
        backend, precision = candidates[0]
        if backend in ONNX_BACKENDS:
            missing = available_backends(device)[backend]
            if missing is not None:
                raise ExportError(missing)
        try:
            check_precision(backend, precision, device)
        except PredictorError as err:
            raise ExportError(str(err)) from None
        if device.type == "cpu" and precision == "bf16" and not bf16:
            notes.append(
                "this CPU has no bf16 units: OpenVINO computes this artifact in f32 here"
                if backend == "openvino"
                else "this CPU has no bf16 units: the bf16 artifact runs emulated (slow)"
            )
    kind = kind_of(cfg.name)
    return_mask = bool(cfg.return_mask)
    if return_mask and kind == "classifier":
        raise ExportError(f"{cfg.name} is a classifier and has no mask; drop --return-mask")
    tolerances = {prec: _tolerance(cfg, prec) for _, prec in candidates}
    batch = cfg.batch or DEFAULT_BATCH
    backend, precision = candidates[0]
    if cfg.tta not in TTAS:
        raise ExportError(f"--tta {cfg.tta!r}: choose one of {', '.join(TTAS)}")
    return Plan(
        cfg.name, kind, device, backend, precision, batch, return_mask, tolerances[precision],
        notes, candidates, tolerances, cfg.tta,
    )  # fmt: skip


def _cpu_candidates(
    precision: str | None, bf16_units: str | None, notes: list[str]
) -> list[tuple[str, str]]:
    """CPU_CANDIDATES that can run here (of `precision` when one is asked for)."""
    if precision == "fp16":
        raise ExportError(
            "fp16 runs on CUDA GPUs; on a CPU use --precision bf16 (CPUs with bf16 units) or fp32"
        )
    reasons = available_backends("cpu")
    out, left = [], []
    for backend, prec in CPU_CANDIDATES:
        if precision is not None and prec != precision:
            continue
        if prec == "bf16" and not bf16_units and precision is None:
            left.append(f"{backend} bf16 (this CPU has no bf16 units)")
        elif reasons.get(backend) is not None:
            left.append(f"{backend} {prec} ({reasons[backend]})")
        else:
            out.append((backend, prec))
    if left:
        notes.append("left out of the CPU default choice: " + "; ".join(left))
    if not out:
        raise ExportError("no CPU backend can run here: " + "; ".join(left))
    return out


def _tolerance(cfg: ExportConfig, precision: str) -> Tolerance:
    base = DEFAULT_TOLERANCES[precision]
    return Tolerance(
        min_agreement=_pick(cfg.min_agreement, base.min_agreement),
        max_df1=_pick(cfg.max_df1, base.max_df1),
        max_dprob=_pick(cfg.max_dprob, base.max_dprob),
        max_drecall=_pick(cfg.max_drecall, base.max_drecall),
        max_dauc=_pick(cfg.max_dauc, base.max_dauc),
        max_ddice=_pick(cfg.max_ddice, base.max_ddice),
    )


def _pick(value, default):
    return default if value is None else value


# ------------------------------------------------------------------------------- parity data


def _phantom_image(i: int, size: int, seed: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Phantom i (every sixth positive, the validation split's 1 : 5) as [0, 1] at size², its
    label and its true mask (uint8, resized like the dataset's: area mean >= 0.5)."""
    from ptxfast.data.dicom import resize
    from ptxfast.data.phantom import make_phantom

    rng = np.random.default_rng([seed, i, 0xE4])
    label = int(i % 6 == 0)
    # Drawn at least at 256² (where the anatomy is resolved) and area-resized like the dataset.
    image, masks, _ = make_phantom(rng, max(size, 256), label)
    # The window the dataset writer stores: body percentiles, so the [0, 1] range matches.
    lo, hi = np.percentile(image[::7, ::7].astype(np.float32), [0.2, 99.9])
    hi = max(hi, lo + 64.0)
    scaled = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    union = np.zeros(image.shape, np.float32)
    for m in masks:
        union = np.maximum(union, m.astype(np.float32))
    if scaled.shape[0] != size:
        scaled, union = resize(scaled, size), resize(union, size)
    return scaled, label, (union >= 0.5).astype(np.uint8)


def phantom_batches(
    n: int, size: int, batch: int, seed: int = 0, *, masks: bool = False
) -> Iterator[tuple[torch.Tensor, ...]]:
    """`n` labelled synthetic radiographs at size², in memory, as (images N×1×S×S, labels N)
    batches, or with `masks` (images, labels, true masks N×1×S×S uint8)."""
    for start in range(0, n, batch):
        items = [_phantom_image(i, size, seed) for i in range(start, min(n, start + batch))]
        x = torch.from_numpy(np.stack([im for im, _, _ in items]))[:, None]
        y = torch.tensor([lab for _, lab, _ in items], dtype=torch.float32)
        if masks:
            yield x, y, torch.from_numpy(np.stack([m for _, _, m in items]))[:, None]
        else:
            yield x, y


def dataset_batches(
    root: Path, size: int, batch: int, seed: int = 0
) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], int]:
    """The validation split of `root` at size² as (images, labels, true masks) batches, and its
    length."""
    from ptxfast.data.datasets import DatasetError, PTXDataset, ensure_splits

    try:
        records = ensure_splits(root, seed=seed)["val"]
    except (DatasetError, OSError) as err:
        raise ExportError(f"cannot read the validation split of {root}: {err}") from None
    if not records:
        raise ExportError(f"{root} has no validation images; pass another --data or none")
    ds = PTXDataset(records, size, with_mask=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=0)
    return ((x, y, m) for x, m, y in loader), len(ds)


def _parity_source(cfg: ExportConfig, state: dict[str, Any], size: int, batch: int):
    """(batches, description): --data, else the recipe's dataset if it is here, else phantoms.
    Batches are (images, labels, true masks)."""
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
    return phantom_batches(n, size, batch, cfg.seed, masks=True), {
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


def collect_outputs(predictor: Predictor, batches) -> dict[str, np.ndarray | None]:
    """A predictor's probabilities, areas and (where it has a mask output and the batches carry
    true masks) per-image Dice against the truth, over labelled (images, labels[, masks])
    batches; with the labels. Masks are reduced to counts per batch, never kept."""
    probs, areas, labels, inter, pred_area, true_area = [], [], [], [], [], []
    with strict_fp32():
        for x, y, *rest in batches:
            truth = rest[0] if rest and predictor.mask_output else None
            out = predictor(x, with_mask=truth is not None)
            probs.append(out.prob.float().cpu().numpy())
            areas.append(out.area.cpu().numpy())
            labels.append(y.flatten().cpu().numpy())
            if truth is not None:
                pred = (out.mask.float().cpu() > PIXEL_THRESHOLD).flatten(1)
                true = truth.bool().flatten(1)
                inter.append((pred & true).sum(1).numpy())
                pred_area.append(pred.sum(1).numpy())
                true_area.append(true.sum(1).numpy())
    if not labels:
        raise ExportError("no parity data (0 images); pass --data DIR or a positive --parity-n")
    counts = [np.concatenate(c) for c in (inter, pred_area, true_area)] if inter else None
    return {
        "prob": np.concatenate(probs),
        "area": np.concatenate(areas),
        "labels": np.concatenate(labels).astype(int),
        "dice": dice_from_counts(*counts).per_image if counts else None,
    }


def compare_outputs(
    candidate: dict[str, Any], reference: dict[str, Any], threshold: float
) -> dict[str, Any]:
    """`metrics.parity` of two `collect_outputs` results (same batches)."""
    return parity(
        reference["prob"], candidate["prob"], reference["labels"], threshold,
        ref_areas=reference["area"], areas=candidate["area"],
        ref_dice=reference["dice"] if candidate["dice"] is not None else None,
        dice=candidate["dice"],
    )  # fmt: skip


def measure_parity(
    candidate: Predictor,
    reference: Predictor,
    batches: Iterator[tuple[torch.Tensor, ...]],
) -> dict[str, Any]:
    """Run both predictors over labelled batches; `metrics.parity` of the candidate against the
    reference (label agreement, ΔF1, Δrecall, ΔROC-AUC, ΔDice where both return masks and the
    batches carry true masks, max |Δprob|, max |Δarea|)."""
    batches = list(batches)
    ref = collect_outputs(reference, batches)
    return compare_outputs(collect_outputs(candidate, batches), ref, candidate.thresholds["label"])


def gate(figures: dict[str, Any], tolerance: Tolerance) -> list[str]:
    """The tolerances `figures` break, as readable phrases (empty: the artifact passes).
    Figures that were not measured (None: no second class for AUC, no masks for Dice) pass."""
    failed = []
    if not figures["agreement"] >= tolerance.min_agreement:
        failed.append(f"label agreement {figures['agreement']:.2%} < {tolerance.min_agreement:.2%}")
    limits = (
        ("delta_f1", "ΔF1", tolerance.max_df1),
        ("delta_recall", "Δrecall", tolerance.max_drecall),
        ("delta_auc", "ΔROC-AUC", tolerance.max_dauc),
        ("delta_dice", "ΔDice", tolerance.max_ddice),
    )
    for key, label, limit in limits:
        value = figures.get(key)
        if limit is not None and value is not None and not abs(value) <= limit:
            failed.append(f"|{label}| {abs(value):.4f} > {limit:g}")
    if not figures["max_abs_diff"] <= tolerance.max_dprob:
        failed.append(f"max |Δprob| {figures['max_abs_diff']:.3g} > {tolerance.max_dprob:g}")
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


@dataclass
class _Candidate:
    """One built artifact awaiting the gate (and, in a CPU default choice, the clock)."""

    backend: str
    precision: str
    predictor: Predictor
    tmp: Path  # the model file, in the output folder under a temporary name
    ext: str
    fields: dict[str, Any]  # sidecar fields that depend on the backend (path, precision, ...)
    build_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    images_per_s: float | None = None

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"


def _build_candidate(
    backend: str,
    precision: str,
    model: torch.nn.Module,
    p: Plan,
    size: int,
    out: Path,
    onnx_file: dict[str, Any],
) -> _Candidate:
    """Build, save and load back one artifact; `onnx_file` caches the ONNX export that the
    ONNX Runtime and OpenVINO candidates share."""
    start = time.perf_counter()
    tmp = out / f".{_stem(p, backend, precision)}.{os.getpid()}.tmp"
    dtype = PRECISIONS[precision]
    common = dict(
        name=p.name, size=size, backend=backend, precision=precision, batch=p.batch,
        return_mask=p.return_mask, rule=p.rule,
    )  # fmt: skip
    try:
        if backend in ONNX_BACKENDS:
            return _onnx_candidate(backend, precision, model, p, size, out, onnx_file, common)
        candidate = fuse(
            model, p.name, size, precision=precision, device=p.device,
            return_mask=p.return_mask, tta=p.tta,
        )  # fmt: skip
    except FusedError as err:
        raise ExportError(str(err)) from None
    ext = EXTENSIONS["torchscript"]
    if backend == "torchscript":
        try:
            scripted = to_torchscript(candidate, p.batch, p.device)
        except FusedError as err:
            raise ExportError(str(err)) from None
        with quiet_jit():
            torch.jit.save(scripted, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location=p.device).eval()
        path = "trace"
        actual, weights = graph_precision(loaded)
        source = "dtype of the frozen graph's weight constants"
        fusion = {"cpu_fusion": cpu_fusion.describe(loaded)}  # the torch it is bound to
    else:
        from ptxfast import trt

        compiled = trt.compile_fused(
            candidate, size=size, batch=p.batch, device=p.device, dtype=dtype
        )
        ext = compiled.ext
        with open(tmp, "wb") as f:  # a file object: exported programs want .pt2 names
            compiled.save(f)
        loaded = trt.load(tmp, compiled.path, p.device)
        path, actual, source = compiled.path, compiled.precision, compiled.precision_source
        weights, fusion = {}, {}
    predictor = Predictor(
        loaded, device=p.device, input_dtype=dtype, path=path, **common
    )  # fmt: skip
    fields = {
        "path": path,
        "precision": {
            "requested": precision,
            "actual": actual,
            "source": source,
            **({"weight_elements": weights} if weights else {}),
        },
        "input_dtype": str(dtype).replace("torch.", ""),
        "channels_last": True,
        **fusion,
    }
    return _Candidate(backend, precision, predictor, tmp, ext, fields, time.perf_counter() - start)


def _onnx_candidate(
    backend: str,
    precision: str,
    model: torch.nn.Module,
    p: Plan,
    size: int,
    out: Path,
    onnx_file: dict[str, Any],
    common: dict[str, Any],
) -> _Candidate:
    from ptxfast import onnx_graph
    from ptxfast.runtime import _onnx_module

    start = time.perf_counter()
    if "path" not in onnx_file:
        tmp = out / f".{p.name}.onnx.{os.getpid()}.tmp"
        fused = fuse(
            model, p.name, size, device="cpu", return_mask=p.return_mask, channels_last=False,
            tta=p.tta,
        )  # fmt: skip
        try:
            onnx_file["info"] = onnx_graph.to_onnx(fused, tmp)
        except onnx_graph.OnnxError as err:
            raise ExportError(str(err)) from None
        onnx_file["path"] = tmp
        onnx_file["seconds"] = time.perf_counter() - start
    tmp, info = onnx_file["path"], onnx_file["info"]
    try:
        module = _onnx_module(backend, tmp, precision, {}, torch.device("cpu"))
    except PredictorError as err:
        raise ExportError(str(err)) from None
    path = f"onnx:{info['exporter']}"
    predictor = Predictor(
        module, device=torch.device("cpu"), path=path, channels_last=False,
        mask_output="mask" in info["outputs"], **common,
    )  # fmt: skip
    runtime = dict(module.info)
    if backend == "openvino":
        actual = "bf16" if runtime["inference_precision"] == "bf16" else "fp32"
        source = "INFERENCE_PRECISION_HINT of the compiled OpenVINO model"
    else:
        actual, source = "fp32", "float32 initializers of the ONNX graph"
    fields = {
        "path": path,
        "precision": {"requested": precision, "actual": actual, "source": source},
        "input_dtype": "float32",
        "channels_last": False,
        "onnx": info,
        "runtime": runtime,
    }
    # The first ONNX candidate's build time includes the export they share.
    seconds = time.perf_counter() - start + onnx_file.pop("seconds", 0.0)
    return _Candidate(backend, precision, predictor, tmp, "onnx", fields, seconds)


def time_predictors(
    predictors: list[Predictor], batch: int, size: int, calls: int = SELECTION_CALLS
) -> list[float]:
    """Images/s of each predictor at `batch` (median of `calls` timed calls after two warm-up
    calls), interleaved call by call so load that comes and goes on a shared machine falls on
    all of them alike."""
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    times: list[list[float]] = [[] for _ in predictors]
    for predictor in predictors:
        for _ in range(2):
            predictor(x)
    for _ in range(calls):
        for predictor, t in zip(predictors, times, strict=True):
            t0 = time.perf_counter()
            predictor(x)
            t.append(time.perf_counter() - t0)
    return [batch / float(np.median(t)) for t in times]


def choose_default(candidates: list[Any]) -> Any:
    """The fastest candidate (highest `images_per_s`) whose gate passed (`failed` empty); an
    ExportError naming each candidate's failures when none passed. Ties keep the earlier one."""
    passed = [c for c in candidates if not c.failed]
    if not passed:
        why = "; ".join(f"{c.label}: {', '.join(c.failed)}" for c in candidates)
        raise ExportError(f"no CPU candidate passed its parity gate ({why}); nothing written")
    return max(passed, key=lambda c: (c.images_per_s or 0.0, -candidates.index(c)))


def _selection_row(c: _Candidate, chosen: _Candidate) -> dict[str, Any]:
    f = c.figures
    return {
        "backend": c.backend,
        "precision": c.precision,
        "images_per_s": c.images_per_s,
        "build_s": round(c.build_s, 2),
        "passed": not c.failed,
        "failed": c.failed,
        "agreement": f.get("agreement"),
        "delta_f1": f.get("delta_f1"),
        "delta_auc": f.get("delta_auc"),
        "delta_dice": f.get("delta_dice"),
        "max_abs_diff": f.get("max_abs_diff"),
        "chosen": c is chosen,
    }


def _stem(p: Plan, backend: str, precision: str) -> str:
    """The artifact's file name without extension; a TTA graph is named apart from the plain one."""
    return file_stem(p.name, backend, precision) + ("" if p.tta == "none" else f"-{p.tta}")


def _probability(operating: dict[str, Any] | None) -> dict[str, Any]:
    """Which probability the graph returns and which one a predictor reports."""
    temp = (operating or {}).get("temperature")
    out: dict[str, Any] = {"graph": "raw", "reported": "calibrated" if temp else "raw"}
    if temp:
        out["calibrated"] = {
            "temperature": temp,
            "formula": "sigmoid(logit(p) / temperature) of the graph's raw p",
            # Outside the graph, so every backend returns the same outputs; exact in float64.
            "computed_by": "the predictor (ptxfast.operating.LabelRule)",
        }
    return out


def _validation_figures(
    reference: Predictor, ref: dict[str, Any], source: dict[str, Any], n_boot: int
) -> dict[str, Any]:
    """Sensitivity and specificity (with 95% bootstrap CIs) at the operating point on the
    export's labelled data (the validation split, or phantoms when there is none), from the
    eager fp32 outputs the parity gate already collected."""
    from ptxfast.metrics import bootstrap_ci

    reported = reference.reported(torch.from_numpy(ref["prob"])).numpy()
    ci = bootstrap_ci(ref["labels"], reported, reference.rule.threshold, n_boot=n_boot)
    split = "val" if source["source"] == "validation split" else source["source"]
    return {
        "split": split,
        "data": source.get("data"),
        "n": int(len(ref["labels"])),
        "n_pos": int(ref["labels"].sum()),
        "recall": ci["recall"],
        "specificity": ci["specificity"],
    }


def export_model(cfg: ExportConfig, say: Callable[[str], None] = lambda _: None) -> ExportResult:
    """Export one model per `cfg`; returns where the artifact and its sidecar are.

    With several candidates (a CPU export without --backend) each is built, gated and timed,
    and the fastest that passes is written. Raises ExportError (ParityError when the one
    candidate's gate fails) with nothing written to `cfg.out`.
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
    masks = p.kind != "classifier"  # the reference returns masks, for Dice
    operating = None
    if cfg.operating_point:
        try:
            operating = resolve_operating_point(cfg.operating_point, ckpt, p.kind)
        except OperatingPointError as err:
            raise ExportError(str(err)) from None
    p.rule = label_rule({"operating_point": operating, "thresholds": thresholds(p.kind, size)})
    try:
        reference = Predictor(
            fuse(model, p.name, size, device=p.device, return_mask=masks, tta=p.tta),
            name=p.name, size=size, backend="eager", precision="fp32", device=p.device,
            path="eager", return_mask=masks, rule=p.rule,
        )  # fmt: skip
    except FusedError as err:
        raise ExportError(str(err)) from None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    choosing = len(p.candidates) > 1
    built: list[_Candidate] = []
    onnx_file: dict[str, Any] = {}
    try:
        batches, source = _parity_source(cfg, state, size, p.batch[1])
        batches = list(batches)
        say(
            f"{p.name}: parity against eager fp32 on {source['source']} ({source['n_planned']} images)"
        )
        ref = collect_outputs(reference, batches)
        if operating is not None:
            operating["val"] = _validation_figures(reference, ref, source, cfg.n_boot)
            say(f"{p.name}: labels {describe({'operating_point': operating})}")
        for backend, precision in p.candidates:
            verb = "compiling" if backend == "tensorrt" else "building"
            say(f"{p.name}: {verb} {backend} {precision} at {size}² on {p.device}")
            try:
                c = _build_candidate(backend, precision, model, p, size, out, onnx_file)
            except ExportError as err:
                if not choosing:
                    raise
                say(f"{p.name}: {backend} {precision} left out ({err})")
                continue
            c.figures = compare_outputs(
                collect_outputs(c.predictor, batches), ref, c.predictor.thresholds["label"]
            )
            c.failed = gate(c.figures, p.tolerances[precision])
            built.append(c)
        if not choosing and built[0].failed:
            c = built[0]
            raise ParityError(
                f"parity gate failed for {p.name} ({c.backend} {c.precision}): "
                f"{'; '.join(c.failed)} (n={c.figures['n']}); no artifact written. Export at a "
                "wider precision, or loosen the tolerance (--min-agreement, --max-df1, "
                "--max-dprob) if you accept the difference",
                {**source, **c.figures, "tolerance": asdict(p.tolerances[c.precision])},
            )
        selection = None
        if choosing:
            say(f"{p.name}: timing {len(built)} candidates at batch {p.batch[1]}")
            speeds = time_predictors([c.predictor for c in built], p.batch[1], size)
            for c, ips in zip(built, speeds, strict=True):
                c.images_per_s = ips
            chosen = choose_default(built)
            selection = {
                "how": f"fastest that passes its gate; median of {SELECTION_CALLS} interleaved "
                f"calls at batch {p.batch[1]}, {torch.get_num_threads()} threads",
                "candidates": [_selection_row(c, chosen) for c in built],
            }
        else:
            chosen = built[0]
        sidecar = _sidecar(p, chosen, size, ckpt, state, cfg, source, operating)
        if selection is not None:
            sidecar["selection"] = selection
        final = out / f"{_stem(p, chosen.backend, chosen.precision)}.{chosen.ext}"
        side = write_artifact(chosen.tmp, final, sidecar)
    finally:
        for c in built:
            c.tmp.unlink(missing_ok=True)
        if "path" in onnx_file:
            onnx_file["path"].unlink(missing_ok=True)
    from ptxfast.artifact import read_sidecar

    return ExportResult(
        sidecar_path=side,
        model_path=final,
        sidecar=read_sidecar(side),
        notes=p.notes,
        seconds=time.perf_counter() - start,
    )


def _sidecar(
    p: Plan,
    c: _Candidate,
    size: int,
    ckpt: Path,
    state: dict[str, Any],
    cfg: ExportConfig,
    source: dict[str, Any],
    operating: dict[str, Any] | None = None,
) -> dict[str, Any]:
    fields = dict(c.fields)
    sidecar = {
        "name": p.name,
        "kind": p.kind,
        "input": {
            "shape": ["N", 1, size, size],
            "size": size,
            "dtype": fields.pop("input_dtype"),
            "range": [0.0, 1.0],
            "channels_last": fields.pop("channels_last"),
        },
        "batch": dict(zip(("min", "opt", "max"), p.batch, strict=True)),
        # label: the cut on the raw probability, the operating point's when there is one.
        "thresholds": {**thresholds(p.kind, size), "label": p.rule.raw_threshold},
        "backend": c.backend,
        "path": fields.pop("path"),
        "precision": fields.pop("precision"),
        "return_mask": p.return_mask,
        "tta": p.tta,
        "operating_point": operating,
        "probability": _probability(operating),
        "outputs": _outputs(p.kind, size, p.return_mask),
        "device": c.predictor.device.type,
        "versions": versions(p.device),
        "created": utc_now(),
        "sources": _sources(ckpt, state, p.name, Path(cfg.runs)),
        "recipe": _recipe_summary(state),
        "parity": {
            **source,
            **c.figures,
            "tolerance": asdict(p.tolerances[c.precision]),
            "passed": True,
        },
    }
    sidecar.update(fields)  # onnx, runtime
    return sidecar


__all__ = [
    "DEFAULT_TOLERANCES",
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "ParityError",
    "Plan",
    "choose_default",
    "collect_outputs",
    "compare_outputs",
    "Tolerance",
    "export_model",
    "gate",
    "load_profile",
    "measure_parity",
    "parse_batch",
    "phantom_batches",
    "plan",
    "time_predictors",
]
