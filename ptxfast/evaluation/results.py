"""What an evaluation is asked and what it returns: `EvalConfig`, the defaults, the metric and
CSV column names, the per-model `ModelResult`, the whole `EvalReport`, and `EvalError`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptxfast.errors import PtxfastError
from ptxfast.metrics import CI_METRICS

DEFAULT_OVERLAYS = 8
DEFAULT_TARGET_RECALLS = (0.90, 0.95)
N_BOOT = 2000  # bootstrap resamples per confidence interval
# Decoded splits are kept in memory (fp16 images, uint8 masks) up to this size, so the eight
METRIC_KEYS = (
    "f1",
    "recall",
    "precision",
    "specificity",
    "npv",
    "accuracy",
    "auc",
    "tn",
    "fp",
    "fn",
    "tp",
    "n",
    "n_pos",
    "dice",
    "dice_pos",
)
# 95% CI columns of the CSV: <metric>_lo, <metric>_hi (bootstrap) for each of CI_METRICS.
CI_COLUMNS = tuple(f"{k}_{end}" for k in CI_METRICS for end in ("lo", "hi"))
CSV_COLUMNS = (
    "model",
    "kind",
    "cutoffs",
    "size",
    "threshold",
    "min_area",
    "target_recall",
    "val_recall",
    "val_specificity",
    *METRIC_KEYS,
    *CI_COLUMNS,
    "temperature",
    "checkpoint",
)


class EvalError(PtxfastError):
    """Evaluation cannot run as asked; the message says what to do."""


@dataclass
class EvalConfig:
    """What `run_evaluation` evaluates and how; the CLI's options fill it."""

    runs: Path = Path("runs")  # folder of <model>/best.pt
    data: Path | None = None  # the dataset; None: the one each checkpoint's recipe names
    out: Path | None = None  # metrics, figures and index.html; None: <runs>/eval
    # Model names (a list or comma-separated); None: all eight, untrained ones listed as missing.
    models: str | Sequence[str] | None = None
    device: str = "auto"
    batch_size: int = 8
    tune: bool = False  # also tune the segmenters' (pixel threshold, min area) on validation
    overlays: int = DEFAULT_OVERLAYS  # images per mask-overlay figure; 0: none
    workers: int = 0  # DataLoader worker processes for decoding
    # Operating points: thresholds chosen on validation for these recalls (empty: none).
    target_recalls: Sequence[float] = DEFAULT_TARGET_RECALLS
    n_boot: int = N_BOOT  # bootstrap resamples per CI

    def __post_init__(self) -> None:
        self.runs = Path(self.runs)
        self.out = Path(self.out) if self.out is not None else self.runs / "eval"
        self.data = Path(self.data) if self.data else None
        if self.batch_size < 1:
            raise EvalError(f"batch size must be at least 1, got {self.batch_size}")
        bad = [r for r in self.target_recalls if not 0 < r <= 1]
        if bad:
            raise EvalError(f"target recall {bad[0]} must be in (0, 1], e.g. --target-recall 0.9")
        if self.n_boot < 100:
            raise EvalError(
                f"{self.n_boot} bootstrap resamples are too few for a 95% CI; use 100 or more"
            )
        self.target_recalls = tuple(sorted(set(float(r) for r in self.target_recalls)))


@dataclass
class ModelResult:
    """One model's test-split figures and where they came from."""

    name: str
    kind: str  # "classifier", "segmenter" or "cascade"
    checkpoint: Path
    sha256: str
    epoch: int | None  # the epoch best.pt was saved at
    size: int  # the input side it was trained (and is evaluated) at
    data: Path  # the dataset whose test split was scored
    cutoffs: dict[str, float]  # {"threshold"} or {"pixel_threshold", "min_area"}
    metrics: dict[str, float]  # METRIC_KEYS at `cutoffs` (dice NaN for classifiers)
    ci: dict[str, dict[str, float]]  # M.bootstrap_ci of `metrics`: {metric: {value, lo, hi, …}}
    # Segmenters with tune=True: {"pixel_threshold", "min_area", "val_f1"} chosen on the
    # validation split and METRIC_KEYS ("metrics") and CIs ("ci") on the test split at them.
    tuned: dict[str, Any] | None
    image_ids: list[str]
    labels: np.ndarray  # 0/1 per test image
    scores: np.ndarray  # per test image: its probability (segmenters: the k-th largest pixel)
    # The logit behind each score: the same order, without float32 sigmoid saturation (many
    # confident images share p = 1.0), so ROC-AUC and the ROC curve rank by it.
    ranks: np.ndarray
    # Per target recall: {"target_recall", "threshold", "chosen_on": "val", "reached", "note",
    # "val": CIs on validation, "metrics" and "ci" on test} (see `_operating_points`).
    operating_points: list[dict[str, Any]] = field(default_factory=list)
    # M.Calibration.as_dict() (temperature fitted on validation logits), or None when the
    # validation split holds one class; then `notes` says why.
    calibration: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class EvalReport:
    """What `evaluate_runs` measured and wrote."""

    runs: Path
    out: Path
    device: str
    results: list[ModelResult]  # in the paper's order: classifiers, segmenters, cascades
    missing: list[str]  # asked-for models without <runs>/<name>/best.pt
    # metrics_json, metrics_csv, confusion, roc, recall_f1, reliability, overlays_<m>,
    # evaluation_<m> (the evaluation.json beside each best.pt)
    files: dict[str, Path]
    seconds: float = 0.0
    n_boot: int = N_BOOT


def operating_point_name(target_recall: float) -> str:
    """How an operating point is named in tables and files: "recall>=0.90"."""
    return f"recall>={target_recall:.2f}"
