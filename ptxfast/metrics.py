"""Metrics as pure functions over numpy arrays: image labels, masks, cut-off tuning, parity.

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


# ------------------------------------------------------------------------------ image labels


def _flat(a) -> np.ndarray:
    return np.asarray(a).reshape(-1)


def _rates(tn, fp, fn, tp) -> dict[str, np.ndarray]:
    """The ratios of a confusion matrix (scalars or arrays of counts, e.g. one per bootstrap
    resample); an empty denominator gives 0, as scikit-learn's `zero_division=0`."""
    tn, fp, fn, tp = (np.asarray(v, dtype=np.float64) for v in (tn, fp, fn, tp))

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b > 0)

    return {
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "recall": ratio(tp, tp + fn),
        "precision": ratio(tp, tp + fp),
        "specificity": ratio(tn, tn + fp),
        "npv": ratio(tn, tn + fn),
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
    }


def _auc(pos, neg, pos_weight=None, neg_weight=None) -> np.ndarray:
    """ROC-AUC as the Mann-Whitney statistic P(pos > neg) + ½ P(pos = neg).

    `pos_weight` (R×P) and `neg_weight` (R×N) are how often each image is drawn in each of R
    resamples (None: once each, R = 1); the result has one AUC per resample. O(R·(P+N)): the
    negatives are sorted once and each positive looks up the weight below and at its score.
    """
    pos = np.asarray(pos, dtype=np.float64).reshape(-1)
    neg = np.asarray(neg, dtype=np.float64).reshape(-1)
    pw = np.ones((1, pos.size)) if pos_weight is None else np.asarray(pos_weight, np.float64)
    nw = np.ones((1, neg.size)) if neg_weight is None else np.asarray(neg_weight, np.float64)
    order = np.argsort(neg, kind="stable")
    neg_sorted = neg[order]
    # cum[:, j] = weight of the j smallest negatives (a leading 0 column for "none").
    cum = np.concatenate([np.zeros((len(nw), 1)), np.cumsum(nw[:, order], axis=1)], axis=1)
    below = cum[:, np.searchsorted(neg_sorted, pos, side="left")]
    at_or_below = cum[:, np.searchsorted(neg_sorted, pos, side="right")]
    wins = (pw * (below + 0.5 * (at_or_below - below))).sum(1)
    return wins / (pw.sum(1) * nw.sum(1))


def binary_metrics(labels, scores, threshold: float, ranking=None) -> dict[str, float]:
    """Image-level figures of `scores` (probabilities or any ranking score) against 0/1 `labels`.

    Predicted positive: score > threshold. Returns f1, recall (sensitivity), precision (PPV),
    specificity, npv, accuracy, auc (ROC-AUC over the raw scores, or over `ranking` when given,
    e.g. the logits, whose order float32 sigmoid saturation does not flatten; NaN with a single
    class), the confusion matrix tn, fp, fn, tp, and n, n_pos. Ratios with an empty
    denominator are 0, as scikit-learn's `zero_division=0`.
    """
    y = _flat(labels).astype(bool)
    s = _flat(scores)
    # Compare in the scores' own precision (float32 stays float32), as torch does, so a label
    # here equals `prob > threshold` on the device even for a score that rounds to it.
    s = s if np.issubdtype(s.dtype, np.floating) else s.astype(np.float64)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores; pass one score per image")
    pred = s > threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    both = y.any() and not y.all()
    if ranking is not None:
        s = _flat(ranking).astype(np.float64)
        if s.shape != y.shape:
            raise ValueError(f"{y.size} labels but {s.size} ranking scores")
    return {
        **{k: float(v) for k, v in _rates(tn, fp, fn, tp).items()},
        "auc": float(_auc(s[y], s[~y])[0]) if both else math.nan,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "n": int(y.size),
        "n_pos": int(y.sum()),
    }


def parity(
    ref_probs,
    probs,
    labels,
    threshold: float = 0.5,
    *,
    ref_areas=None,
    areas=None,
    ref_dice=None,
    dice=None,
) -> dict[str, float | int | None]:
    """How far `probs` (an exported or lower-precision model) is from `ref_probs` (eager fp32).

    The one parity measure: the export gate, the benchmark and the CPU default choice all report
    these keys. Against the ground-truth `labels`: f1, recall and ROC-AUC of both and their
    differences (new − reference); agreement: share of images whose label (p > threshold) is the
    same, n_disagree how many are not; max / mean |Δp|. With mask areas (`ref_areas`, `areas`;
    negative means no mask): max_abs_delta_area. With per-image Dice against the true masks
    (`ref_dice`, `dice`, e.g. `dice_from_counts(...).per_image`): their means and delta_dice.
    Figures that do not apply are None. Non-finite probabilities make max/mean |Δp| infinite.
    """
    ref, new = _flat(ref_probs), _flat(probs)
    if ref.shape != new.shape:
        raise ValueError(f"{ref.size} reference probabilities but {new.size} to compare")
    a = binary_metrics(labels, ref, threshold)
    finite = bool(np.isfinite(new.astype(np.float64)).all())
    b = binary_metrics(labels, np.nan_to_num(new, nan=-1.0), threshold)
    same = (ref > threshold) == (new > threshold)
    diff = np.abs(new.astype(np.float64) - ref.astype(np.float64))
    out: dict[str, float | int | None] = {
        "n": int(ref.size),
        "n_pos": a["n_pos"],
        "agreement": float(same.mean()) if same.size else 1.0,
        "n_disagree": int((~same).sum()),
        "f1_ref": a["f1"],
        "f1": b["f1"],
        "delta_f1": b["f1"] - a["f1"],
        "recall_ref": a["recall"],
        "recall": b["recall"],
        "delta_recall": b["recall"] - a["recall"],
        "auc_ref": None if math.isnan(a["auc"]) else a["auc"],
        "auc": None if math.isnan(b["auc"]) else b["auc"],
        "delta_auc": None if math.isnan(a["auc"]) else b["auc"] - a["auc"],
        "max_abs_diff": (float(diff.max()) if ref.size else 0.0) if finite else math.inf,
        "mean_abs_diff": (float(diff.mean()) if ref.size else 0.0) if finite else math.inf,
        "max_abs_delta_area": None,
        "dice_ref": None,
        "dice": None,
        "delta_dice": None,
    }
    if ref_areas is not None and areas is not None:
        ra, na = _flat(ref_areas).astype(np.int64), _flat(areas).astype(np.int64)
        if ra.size and (ra >= 0).any():
            out["max_abs_delta_area"] = int(np.abs(na - ra).max())
    if ref_dice is not None and dice is not None:
        rd, nd = _flat(ref_dice).astype(np.float64), _flat(dice).astype(np.float64)
        if rd.size:
            out["dice_ref"], out["dice"] = float(rd.mean()), float(nd.mean())
            out["delta_dice"] = out["dice"] - out["dice_ref"]
    return out


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


# --------------------------------------------------------------------------- operating points


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


# ------------------------------------------------------------------- confidence intervals

CI_METRICS = ("recall", "specificity", "precision", "npv", "f1", "auc")
# Proportions with a binomial denominator: (metric, numerator, denominator) for Wilson.
_PROPORTIONS = {
    "recall": ("tp", ("tp", "fn")),
    "specificity": ("tn", ("tn", "fp")),
    "precision": ("tp", ("tp", "fp")),
    "npv": ("tn", ("tn", "fn")),
}


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (NaN, NaN when n = 0)."""
    from statistics import NormalDist

    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(
    labels,
    scores,
    threshold: float,
    ranking=None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Point estimates and 95% CIs of CI_METRICS at `threshold`, by stratified bootstrap.

    Each of `n_boot` resamples draws P positives and N negatives with replacement from the P and
    N images (seeded, so a report is reproducible); each metric's interval is the percentile
    interval of its resampled values. All resamples are computed at once from per-image draw
    counts, with the rules of `binary_metrics` (`_rates`, `_auc`). Returns {metric: {"value",
    "lo", "hi"}} plus, for the four proportions, "wilson_lo"/"wilson_hi". AUC (over `ranking`
    when given) is NaN without both classes, and so are all intervals without images.
    """
    y = _flat(labels).astype(bool)
    s = _flat(scores)
    s = s if np.issubdtype(s.dtype, np.floating) else s.astype(np.float64)
    r = s.astype(np.float64) if ranking is None else _flat(ranking).astype(np.float64)
    if not (y.shape == s.shape == r.shape):
        raise ValueError(f"{y.size} labels but {s.size} scores; pass one score per image")
    point = binary_metrics(y, s, threshold, ranking=r)
    out: dict[str, dict[str, float]] = {k: {"value": point[k]} for k in CI_METRICS}
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    rng = np.random.default_rng(seed)
    # Draw counts per image and resample (n_boot × images): a multinomial per class.
    pw = rng.multinomial(n_pos, np.full(n_pos, 1 / n_pos), size=n_boot) if n_pos else None
    nw = rng.multinomial(n_neg, np.full(n_neg, 1 / n_neg), size=n_boot) if n_neg else None
    pred = s > threshold
    zero = np.zeros(n_boot)
    tp = pw @ pred[y] if n_pos else zero
    fn = n_pos - tp
    fp = nw @ pred[~y] if n_neg else zero
    tn = n_neg - fp
    boot = _rates(tn, fp, fn, tp)
    boot["auc"] = _auc(r[y], r[~y], pw, nw) if n_pos and n_neg else np.full(n_boot, math.nan)
    tail = 100 * (1 - level) / 2
    for k in CI_METRICS:
        values = boot[k]
        if not y.size or np.isnan(values).all():
            out[k].update(lo=math.nan, hi=math.nan)
        else:
            lo, hi = np.percentile(values, [tail, 100 - tail])
            out[k].update(lo=float(lo), hi=float(hi))
    for k, (num, den) in _PROPORTIONS.items():
        lo, hi = wilson_interval(point[num], sum(point[d] for d in den), level)
        out[k].update(wilson_lo=lo, wilson_hi=hi)
    return out


def operating_point(
    val_labels, val_scores, test_labels, test_scores, target: float, test_ranking=None, **ci
) -> dict:
    """A threshold chosen on validation for `target` recall, applied to the test split.

    Returns {"threshold", "chosen_on": "val", "target_recall", "reached", "note", "val":
    bootstrap_ci on validation, "test": bootstrap_ci on test}; `ci` goes to `bootstrap_ci`
    (n_boot, seed, level).
    """
    op = threshold_for_recall(val_labels, val_scores, target)
    return {
        "threshold": op.threshold,
        "chosen_on": "val",
        "target_recall": op.target_recall,
        "reached": op.reached,
        "note": op.note,
        "val": bootstrap_ci(val_labels, val_scores, op.threshold, **ci),
        "test": bootstrap_ci(test_labels, test_scores, op.threshold, ranking=test_ranking, **ci),
    }


# ------------------------------------------------------------------------------ calibration


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free for any logit


def fit_temperature(logits, labels) -> float:
    """The temperature T > 0 minimising the binary cross-entropy of sigmoid(logit / T).

    One scalar, so ranking and ROC-AUC are unchanged and only the probabilities move. Fitted on
    validation logits (segmenters: the logit of the k-th largest pixel). Searched over log T in
    [-4, 6] (T from 0.02 to 400) by bounded Brent; one class only raises ValueError (any T
    would do, the fit says nothing).
    """
    from scipy.optimize import minimize_scalar

    z = _flat(logits).astype(np.float64)
    y = _flat(labels).astype(np.float64)
    if z.shape != y.shape:
        raise ValueError(f"{y.size} labels but {z.size} logits")
    if not (0 < y.sum() < y.size):
        raise ValueError(
            "temperature scaling needs both positives and negatives among the validation images"
        )

    def nll(log_t: float) -> float:
        x = z / math.exp(log_t)
        # BCE with logits, stable: log(1 + e^x) − y·x.
        return float(np.mean(np.logaddexp(0.0, x) - y * x))

    fit = minimize_scalar(nll, bounds=(-4.0, 6.0), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(fit.x))


def reliability_bins(labels, probs, bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width probability bins: per bin the count, mean predicted probability and share of
    positives (NaN in empty bins). The last bin includes 1.0."""
    y = _flat(labels).astype(np.float64)
    p = _flat(probs).astype(np.float64)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=bins) / count
        freq = np.bincount(idx, weights=y, minlength=bins) / count
    return {
        "count": count,
        "confidence": conf,
        "frequency": freq,
        "edges": np.linspace(0, 1, bins + 1),
    }


def expected_calibration_error(labels, probs, bins: int = 10) -> float:
    """ECE: the count-weighted mean |share of positives − mean probability| over
    `reliability_bins` (NaN without images)."""
    b = reliability_bins(labels, probs, bins)
    n = b["count"].sum()
    if not n:
        return math.nan
    full = b["count"] > 0
    gap = np.abs(b["frequency"][full] - b["confidence"][full])
    return float((b["count"][full] * gap).sum() / n)


@dataclass(frozen=True)
class Calibration:
    """A temperature fitted on validation and the ECE it gives, before and after."""

    temperature: float
    ece_val_before: float
    ece_val_after: float
    ece_test_before: float
    ece_test_after: float
    bins: int

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def calibrate(val_logits, val_labels, test_logits, test_labels, bins: int = 10) -> Calibration:
    """Fit a temperature on validation logits and measure ECE on both splits before and after."""
    t = fit_temperature(val_logits, val_labels)

    def ece(z, y, temp: float) -> float:
        return expected_calibration_error(y, _sigmoid(_flat(z).astype(np.float64) / temp), bins)

    return Calibration(
        temperature=t,
        ece_val_before=ece(val_logits, val_labels, 1.0),
        ece_val_after=ece(val_logits, val_labels, t),
        ece_test_before=ece(test_logits, test_labels, 1.0),
        ece_test_after=ece(test_logits, test_labels, t),
        bins=bins,
    )


def calibrated(logits, temperature: float) -> np.ndarray:
    """Probabilities sigmoid(logit / T) (the one formula every calibrated figure uses)."""
    return _sigmoid(_flat(logits).astype(np.float64) / temperature)
