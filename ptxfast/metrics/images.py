"""Image-level figures: the confusion-matrix rates, ROC-AUC as the Mann-Whitney statistic,
`binary_metrics` (the one F1/recall/precision/AUC everything reports) and `parity` (the one
comparison of an exported or lower-precision model against eager fp32)."""

from __future__ import annotations

import math

import numpy as np


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
