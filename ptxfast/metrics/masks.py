"""Mask figures: Dice from masks or from per-image pixel counts, and the segmenter → label rule
over mask probabilities (or their sorted top pixels)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptxfast.metrics.images import _flat


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
