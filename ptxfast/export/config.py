"""What an export is asked to do: its settings, its tolerances, its profiles and its errors.

`ExportConfig` is one export (None fields take the profile's value, then the default);
`Tolerance` and `DEFAULT_TOLERANCES` say how far an artifact may be from eager fp32;
`load_profile` reads `export/*.toml`, `parse_batch` a MIN:OPT:MAX range; `ExportResult` is
what `export_model` returns and `ExportError` / `ParityError` what it raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ptxfast import read_toml, shipped_dir, shipped_toml
from ptxfast.errors import PtxfastError

PROFILE_DIR = shipped_dir("export")


DEFAULT_PARITY_N = 200  # synthetic phantoms when there is no validation split


class ExportError(PtxfastError):
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
    # Tolerance overrides by `Tolerance` field name, e.g. {"max_dprob": 0.05}; over the
    # profile's [tolerance], over the precision's DEFAULT_TOLERANCES.
    tolerance: dict[str, float] = field(default_factory=dict)
    # How the artifact labels: "recall=0.95" (the threshold `ptxfast evaluate` chose on
    # validation), "threshold=0.37", "calibrated"; None: the model's default rule.
    operating_point: str | None = None
    tta: str = "none"  # "hflip": average each image with its mirror inside the graph
    n_boot: int = 2000  # bootstrap resamples behind the operating point's validation CIs
    triton: Path | None = None  # also write a Triton model repository here (export.triton)
    # The CLI option that named the model ("cascade" | "model"): a name it does not take is
    # refused with the option's own choices; None (library calls) takes any of the eight.
    option: str | None = None


@dataclass
class ExportResult:
    """What `export_model` made."""

    sidecar_path: Path
    model_path: Path
    sidecar: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # one-line choices made on the user's behalf
    seconds: float = 0.0
    triton: list[Path] = field(default_factory=list)  # config.pbtxt of each Triton model written


def profile_path(profile: str | Path) -> Path:
    """`cpu-fp32` (a profile in export/) or a path to a .toml file."""
    try:
        return shipped_toml(profile, "export", "profile")
    except FileNotFoundError as err:
        raise ExportError(str(err)) from None


_PROFILE_KEYS = ("backend", "precision", "device", "batch", "size", "return_mask", "tolerance")


TOLERANCE_KEYS = tuple(f.name for f in fields(Tolerance))


def check_tolerance(values: dict[str, Any], where: str) -> dict[str, float]:
    """Tolerance overrides as floats; unknown names are an ExportError naming `where`."""
    bad = set(values) - set(TOLERANCE_KEYS)
    if bad:
        raise ExportError(f"{where}: unknown tolerance(s) {sorted(bad)}; known: {TOLERANCE_KEYS}")
    return {k: float(v) for k, v in values.items()}


def load_profile(profile: str | Path) -> dict[str, Any]:
    """A profile's settings as ExportConfig field values (batch parsed, tolerances checked)."""
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
    if "tolerance" in doc:
        values["tolerance"] = check_tolerance(doc["tolerance"], str(path))
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
