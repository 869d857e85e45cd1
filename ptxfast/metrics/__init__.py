"""Metrics as pure functions over numpy arrays: image labels, masks, cut-off tuning, parity.

`images` (binary_metrics, parity), `masks` (Dice, the segmenter label rule), `cutoffs` (tuning
and operating points), `intervals` (bootstrap and Wilson CIs) and `calibration` (temperature
scaling, ECE); every name is importable from `ptxfast.metrics` itself.

Every stage that reports a figure (training, evaluation, export parity, the benchmark) computes it
here, so an F1 means the same thing everywhere. Only numpy and scikit-learn are imported up front
(the paper's constants come from `ptxfast.models` when a function needs them). Conventions:

- An image is called positive when its score is *strictly greater* than the threshold.
- ROC-AUC is NaN when the labels hold one class only (it is undefined there). It is the
  Mann-Whitney statistic (ties count one half), which equals the area under the ROC curve and
  lets the bootstrap weigh resampled images without copying them (`_auc`).
- Confidence intervals are 95% percentile intervals of a stratified bootstrap over images
  (positives and negatives resampled apart, so every resample keeps the split's prevalence);
  Wilson score intervals of the proportions are reported beside them as a cross-check.
- Dice of an empty prediction against an empty truth is 1 (nothing to find, nothing found).
- Segmenter → label: an image is positive when *more than* `min_area` pixels have p > t, which
  equals "the (min_area+1)-th largest pixel probability is > t" (`models.score_k`).
"""

from ptxfast.metrics.calibration import (
    Calibration,
    calibrate,
    calibrated,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from ptxfast.metrics.cutoffs import (
    AREA_GRID_512,
    THRESHOLD_GRID,
    Cutoffs,
    OperatingPoint,
    area_grid,
    threshold_for_recall,
    tune_cutoffs,
)
from ptxfast.metrics.images import binary_metrics, parity
from ptxfast.metrics.intervals import CI_METRICS, bootstrap_ci, operating_point, wilson_interval
from ptxfast.metrics.masks import (
    DiceScores,
    dice,
    dice_from_counts,
    seg_labels,
    sorted_labels,
    top_pixels,
)

__all__ = [
    "AREA_GRID_512",
    "CI_METRICS",
    "THRESHOLD_GRID",
    "Calibration",
    "Cutoffs",
    "DiceScores",
    "OperatingPoint",
    "area_grid",
    "binary_metrics",
    "bootstrap_ci",
    "calibrate",
    "calibrated",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "threshold_for_recall",
    "wilson_interval",
    "dice",
    "dice_from_counts",
    "operating_point",
    "parity",
    "seg_labels",
    "sorted_labels",
    "tune_cutoffs",
    "top_pixels",
]
