"""Calibration: temperature scaling fitted on validation logits, reliability bins and the
expected calibration error before and after."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptxfast.metrics.images import _flat


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
