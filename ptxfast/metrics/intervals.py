"""95% confidence intervals: a stratified bootstrap over images (all resamples at once, by the
rules of `binary_metrics`) with Wilson score intervals beside it, and an operating point chosen
on validation reported with its intervals on both splits."""

from __future__ import annotations

import math

import numpy as np

from ptxfast.metrics.cutoffs import threshold_for_recall
from ptxfast.metrics.images import _auc, _flat, _rates, binary_metrics

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
