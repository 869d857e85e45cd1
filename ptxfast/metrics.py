"""Metrics as pure functions over numpy arrays: image labels, masks, cut-off tuning, parity.

Every stage that reports a figure (training, evaluation, export parity, the benchmark) computes it
here, so an F1 means the same thing everywhere. Only numpy and scikit-learn are imported up front
(the paper's constants come from `ptxfast.models` when a function needs them). Conventions:

- An image is called positive when its score is *strictly greater* than the threshold.
- ROC-AUC is NaN when the labels hold one class only (it is undefined there).
- Dice of an empty prediction against an empty truth is 1 (nothing to find, nothing found).
- Segmenter → label: an image is positive when *more than* `min_area` pixels have p > t, which
  equals "the (min_area+1)-th largest pixel probability is > t" (`models.score_k`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The tuning grid: pixel thresholds, and minimum areas given at 512² (the paper's 375 among
# them) and scaled by area to the model's size like `models.min_area`.
THRESHOLD_GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))
AREA_GRID_512 = (0, 25, 50, 100, 200, 375, 500, 750, 1000, 1500, 2000, 3000)

__all__ = [
    "AREA_GRID_512",
    "THRESHOLD_GRID",
    "Cutoffs",
    "DiceScores",
    "area_grid",
    "binary_metrics",
    "dice",
    "dice_from_counts",
    "parity",
    "seg_labels",
    "sorted_labels",
    "tune_cutoffs",
    "top_pixels",
]


# ------------------------------------------------------------------------------ image labels


def _flat(a) -> np.ndarray:
    return np.asarray(a).reshape(-1)


def binary_metrics(labels, scores, threshold: float, ranking=None) -> dict[str, float]:
    """Image-level figures of `scores` (probabilities or any ranking score) against 0/1 `labels`.

    Predicted positive: score > threshold. Returns f1, recall (sensitivity), precision,
    specificity, accuracy, auc (ROC-AUC over the raw scores, or over `ranking` when given, e.g.
    the logits, whose order float32 sigmoid saturation does not flatten; NaN with a single
    class), the confusion matrix tn, fp, fn, tp, and n, n_pos. Ratios with an empty
    denominator are 0, as scikit-learn's `zero_division=0`.
    """
    from sklearn.metrics import confusion_matrix, roc_auc_score

    y = _flat(labels).astype(bool)
    s = _flat(scores)
    # Compare in the scores' own precision (float32 stays float32), as torch does, so a label
    # here equals `prob > threshold` on the device even for a score that rounds to it.
    s = s if np.issubdtype(s.dtype, np.floating) else s.astype(np.float64)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores; pass one score per image")
    pred = s > threshold
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[False, True]).ravel())

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    both = y.any() and not y.all()
    if ranking is not None:
        s = _flat(ranking).astype(np.float64)
        if s.shape != y.shape:
            raise ValueError(f"{y.size} labels but {s.size} ranking scores")
    return {
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "recall": ratio(tp, tp + fn),
        "precision": ratio(tp, tp + fp),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, y.size),
        "auc": float(roc_auc_score(y, s)) if both else math.nan,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "n": int(y.size),
        "n_pos": int(y.sum()),
    }


def parity(ref_probs, probs, labels, threshold: float = 0.5) -> dict[str, float]:
    """How far `probs` (e.g. an exported or fp16 model) is from `ref_probs` (eager fp32).

    agreement: share of images whose label (p > threshold) is the same; n_disagree: how many are
    not; f1/recall of both and their differences (new − reference); max_abs_diff: max |Δp|.
    """
    ref, new = _flat(ref_probs), _flat(probs)
    if ref.shape != new.shape:
        raise ValueError(f"{ref.size} reference probabilities but {new.size} to compare")
    a = binary_metrics(labels, ref, threshold)
    b = binary_metrics(labels, new, threshold)
    same = (ref > threshold) == (new > threshold)
    ref, new = ref.astype(np.float64), new.astype(np.float64)
    return {
        "agreement": float(same.mean()) if same.size else 1.0,
        "n_disagree": int((~same).sum()),
        "f1_ref": a["f1"],
        "f1": b["f1"],
        "delta_f1": b["f1"] - a["f1"],
        "recall_ref": a["recall"],
        "recall": b["recall"],
        "delta_recall": b["recall"] - a["recall"],
        "max_abs_diff": float(np.abs(new - ref).max()) if ref.size else 0.0,
        "n": int(ref.size),
    }


# ------------------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class DiceScores:
    """Dice per image and its means (empty prediction vs empty truth counts as 1)."""

    per_image: np.ndarray  # float64, shape N
    mean: float  # over all images (NaN when there are none)
    mean_positive: float  # over images whose true mask is not empty (NaN when there are none)
    n_positive: int


def dice_from_counts(intersection, pred_area, true_area) -> DiceScores:
    """Dice from per-image pixel counts |P∩T|, |P|, |T| (lets callers count on a GPU)."""
    inter = _flat(intersection).astype(np.float64)
    p = _flat(pred_area).astype(np.float64)
    t = _flat(true_area).astype(np.float64)
    total = p + t
    # Empty vs empty is a correct "nothing here", so 1; otherwise the usual 2|P∩T| / (|P|+|T|).
    per = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    pos = t > 0
    return DiceScores(
        per_image=per,
        mean=float(per.mean()) if per.size else math.nan,
        mean_positive=float(per[pos].mean()) if pos.any() else math.nan,
        n_positive=int(pos.sum()),
    )


def dice(pred_masks, true_masks) -> DiceScores:
    """Dice of binary masks, N×H×W (or N×1×H×W); nonzero is foreground."""
    pred = np.asarray(pred_masks).astype(bool)
    true = np.asarray(true_masks).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: predicted {pred.shape}, true {true.shape}")
    pred, true = pred.reshape(len(pred), -1), true.reshape(len(true), -1)
    return dice_from_counts((pred & true).sum(1), pred.sum(1), true.sum(1))


def seg_labels(prob_masks, pixel_threshold: float, min_area: int) -> np.ndarray:
    """Image labels (bool, N) of mask probabilities N×H×W (or N×1×H×W): more than `min_area`
    pixels with p > `pixel_threshold`. The paper's rule: `models.PIXEL_THRESHOLD` and
    `models.min_area(size)`."""
    p = np.asarray(prob_masks)
    return (p.reshape(len(p), -1) > pixel_threshold).sum(1) > min_area


def top_pixels(prob_masks, k: int) -> np.ndarray:
    """The k largest pixel probabilities of each mask, descending: N×k float32.

    Column j is the (j+1)-th largest pixel, so `sorted_labels` can apply any (threshold, area)
    with area < k without keeping whole masks.
    """
    p = np.asarray(prob_masks, dtype=np.float32)
    flat = p.reshape(len(p), -1)
    if not 1 <= k <= flat.shape[1]:
        raise ValueError(f"k = {k} must be between 1 and the {flat.shape[1]} pixels of a mask")
    part = -np.partition(-flat, k - 1, axis=1)[:, :k]
    return -np.sort(-part, axis=1)


def sorted_labels(top, pixel_threshold: float, min_area: int) -> np.ndarray:
    """`seg_labels` from `top_pixels` output: the (min_area+1)-th largest pixel > threshold."""
    top = np.asarray(top)
    if min_area >= top.shape[1]:
        raise ValueError(f"min_area {min_area} needs at least {min_area + 1} sorted pixels")
    return top[:, min_area] > pixel_threshold


# ------------------------------------------------------------------------------------ tuning


def area_grid(size: int) -> tuple[int, ...]:
    """AREA_GRID_512 scaled to size×size (sorted, distinct), with the paper's `min_area(size)`."""
    from ptxfast.models import min_area

    scale = (size / 512) ** 2
    return tuple(sorted({round(a * scale) for a in AREA_GRID_512} | {min_area(size)}))


@dataclass(frozen=True)
class Cutoffs:
    """Segmenter cut-offs chosen on validation data, and the F1 they reach there."""

    pixel_threshold: float
    min_area: int
    f1: float
    thresholds: tuple[float, ...]
    areas: tuple[int, ...]
    grid: np.ndarray  # F1 at thresholds × areas

    def as_dict(self) -> dict[str, float]:
        return {
            "pixel_threshold": self.pixel_threshold,
            "min_area": self.min_area,
            "val_f1": self.f1,
        }


def tune_cutoffs(
    prob_masks_or_sorted_scores,
    labels,
    size: int,
    thresholds: Sequence[float] = THRESHOLD_GRID,
    areas: Sequence[int] | None = None,
) -> Cutoffs:
    """The (pixel threshold, min area) of the grid with the best image F1 on validation data.

    Input: mask probabilities N×S×S / N×1×S×S, or their `top_pixels` (N×K, descending, K larger
    than the largest area). Areas default to `area_grid(size)`. Ties go to the cut-offs nearest
    the paper's (0.3, min_area(size)), so a flat F1 surface keeps the published rule.
    """
    areas = tuple(area_grid(size) if areas is None else sorted(set(areas)))
    data = np.asarray(prob_masks_or_sorted_scores)
    top = data if data.ndim == 2 else top_pixels(data, max(areas) + 1)
    y = _flat(labels).astype(bool)
    if len(top) != y.size:
        raise ValueError(f"{len(top)} masks but {y.size} labels")
    grid = np.zeros((len(thresholds), len(areas)))
    for i, t in enumerate(thresholds):
        for j, a in enumerate(areas):
            pred = sorted_labels(top, t, a)
            tp = int((pred & y).sum())
            denom = int(pred.sum() + y.sum())
            grid[i, j] = 2 * tp / denom if denom else 0.0
    from ptxfast.models import PIXEL_THRESHOLD, min_area

    paper = (PIXEL_THRESHOLD, min_area(size))

    def distance(ij: tuple[int, int]) -> tuple[float, float]:
        t, a = thresholds[ij[0]], areas[ij[1]]
        return abs(t - paper[0]), abs(a - paper[1]) / max(paper[1], 1)

    best = max(grid.flat)
    ties = [ij for ij in np.ndindex(grid.shape) if grid[ij] == best]
    i, j = min(ties, key=distance)
    return Cutoffs(float(thresholds[i]), int(areas[j]), float(best), tuple(thresholds), areas, grid)
