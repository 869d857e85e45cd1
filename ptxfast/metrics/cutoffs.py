"""Choosing cut-offs on validation data: the segmenters' (pixel threshold, min area) by F1 over
a grid, and the threshold that reaches a target recall (an operating point)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ptxfast.metrics.images import _flat, binary_metrics
from ptxfast.metrics.masks import sorted_labels, top_pixels

# The tuning grid: pixel thresholds, and minimum areas given at 512² (the paper's 375 among
# them) and scaled by area to the model's size like `models.min_area`.
THRESHOLD_GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))
AREA_GRID_512 = (0, 25, 50, 100, 200, 375, 500, 750, 1000, 1500, 2000, 3000)


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


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold chosen on one split for a target recall, and what it reaches there.

    Labels follow the one rule: positive when score > threshold. `reached` is False when no
    threshold in [0, 1) reaches the target (positives scoring exactly 0); the threshold is then
    the lowest one, 0, and `note` says so.
    """

    threshold: float
    target_recall: float
    recall: float  # on the split it was chosen on
    specificity: float
    n: int
    n_pos: int
    reached: bool
    note: str = ""

    def as_dict(self) -> dict[str, float | int | bool | str]:
        return dict(self.__dict__)


def threshold_for_recall(labels, scores, target: float) -> OperatingPoint:
    """The highest threshold t in [0, 1) whose recall (score > t) on these images is ≥ target.

    Recall only changes where t passes a score, so the highest such t lies just below the score
    s* of the ⌈target·P⌉-th best positive; t is the midpoint between s* and the next lower
    distinct score of any image (0 when none is lower), which calls every image here exactly as
    the supremum would while leaving room for a backend's rounding. Positives tied at s* all
    count, so the recall reached may exceed the target. Scores are probabilities (segmenters:
    the k-th largest pixel probability). All-negative labels raise ValueError: no recall.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target recall {target} must be in (0, 1]")
    y = _flat(labels).astype(bool)
    s = _flat(scores)
    s = s if np.issubdtype(s.dtype, np.floating) else s.astype(np.float64)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores; pass one score per image")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError(
            f"no positives among the {y.size} images, so recall is undefined and no threshold "
            "can be chosen for it; choose on a split with pneumothoraces (remake it with "
            "`ptxfast split`)"
        )
    pos = np.sort(s[y])[::-1]
    need = math.ceil(target * n_pos - 1e-9)  # 0.9 × 10 is 9 positives, not 10 by rounding
    star = pos[need - 1]
    lower = s[s < star]
    reached = bool(star > 0.0)
    if reached:
        below = lower.max() if lower.size else s.dtype.type(0)
        mid = s.dtype.type((float(star) + float(below)) / 2)
        # In the scores' precision the midpoint of two neighbouring floats is one of them.
        threshold = float(mid if below < mid < star else below)
        note = ""
    else:
        threshold = 0.0
        note = (
            f"recall {target:g} is out of reach: {int((s[y] <= 0).sum())} of {n_pos} positives "
            f"score 0, below every threshold; using the lowest threshold 0"
        )
    m = binary_metrics(y, s, threshold)
    return OperatingPoint(
        threshold=threshold,
        target_recall=float(target),
        recall=m["recall"],
        specificity=m["specificity"],
        n=int(y.size),
        n_pos=n_pos,
        reached=reached,
        note=note,
    )
