"""Cut-offs and operating points of one model: the paper's cut-offs by kind
(`models.thresholds`), thresholds chosen on the validation split for target recalls and applied
unchanged to test, a segmenter's (pixel threshold, min area) tuned on validation by F1, and
temperature scaling fitted on the validation logits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptxfast import metrics as M
from ptxfast.evaluation.infer import Outputs, figures, reported_dice
from ptxfast.evaluation.results import EvalError
from ptxfast.models import PIXEL_THRESHOLD, label_threshold, thresholds

__all__ = [
    "calibration",
    "choose_thresholds",
    "operating_points",
    "paper_cutoffs",
    "paper_figures",
    "tuned_cutoffs",
]


def paper_cutoffs(kind: str, size: int) -> dict[str, float]:
    """The paper's cut-offs of a model of `kind` at size×size, named as the report names them:
    {"threshold"} (cascades also "pixel_threshold", of their masks) or, for segmenters,
    {"pixel_threshold", "min_area"}."""
    rule = thresholds(kind, size)
    if kind == "segmenter":
        return {"pixel_threshold": rule["pixel"], "min_area": rule["min_area"]}
    cut = {"threshold": rule["label"]}
    if kind == "cascade":
        cut["pixel_threshold"] = rule["pixel"]
    return cut


def paper_figures(
    kind: str, size: int, test: Outputs, n_boot: int
) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, float]], M.DiceScores | None]:
    """(cut-offs, METRIC_KEYS, CIs, Dice) of the test outputs at the paper's cut-offs; Dice of
    the masks above PIXEL_THRESHOLD of the images called positive (None for classifiers)."""
    threshold = label_threshold(kind)
    called = test.scores > threshold
    dice = reported_dice(test, PIXEL_THRESHOLD, called) if kind != "classifier" else None
    metrics, ci = figures(test.labels, test.scores, threshold, dice, test.ranks, n_boot)
    return paper_cutoffs(kind, size), metrics, ci, dice


def choose_thresholds(
    name: str, root: Path, val: Outputs, targets: Sequence[float]
) -> list[M.OperatingPoint]:
    """The operating point of each target recall on the validation outputs."""
    if targets and not val.labels.any():
        raise EvalError(
            f"{name}: the validation split of {root} holds no pneumothorax ({len(val.labels)} "
            "images), so no threshold can be chosen for a target recall; remake the splits "
            f"with `ptxfast split --data {root} --force` or pass --target-recall none"
        )
    return [M.threshold_for_recall(val.labels, val.scores, r) for r in targets]


def operating_points(
    kind: str,
    chosen: Sequence[M.OperatingPoint],
    val: Outputs,
    test: Outputs,
    n_boot: int,
) -> list[dict[str, Any]]:
    """Each validation-chosen threshold applied to the test split: figures and CIs on both."""
    points = []
    for op in chosen:
        t = op.threshold
        called = test.scores > t
        # Segmenters: the threshold is the pixel threshold of the k-th-pixel rule, so the mask
        # reported is the pixels above it; cascades keep the paper's 0.3 for their masks.
        pixel = t if kind == "segmenter" else PIXEL_THRESHOLD
        dice = reported_dice(test, pixel, called) if kind != "classifier" else None
        metrics, ci = figures(test.labels, test.scores, t, dice, test.ranks, n_boot)
        val_ci = M.bootstrap_ci(val.labels, val.scores, t, ranking=val.ranks, n_boot=n_boot)
        points.append(
            {
                "target_recall": op.target_recall,
                "threshold": t,
                "chosen_on": "val",
                "reached": op.reached,
                "note": op.note,
                "val": {"n": op.n, "n_pos": op.n_pos, **val_ci},
                "metrics": metrics,
                "ci": ci,
            }
        )
    return points


def calibration(val: Outputs, test: Outputs) -> tuple[dict[str, float] | None, str]:
    """Temperature scaling on the validation logits (segmenters: the k-th pixel's logit)."""
    if not (0 < val.labels.sum() < len(val.labels)):
        return None, "not calibrated: the validation split holds one class only"
    cal = M.calibrate(val.ranks, val.labels, test.ranks, test.labels)
    return cal.as_dict(), ""


def tuned_cutoffs(val: Outputs, test: Outputs, size: int, n_boot: int) -> dict[str, Any]:
    """A segmenter's (pixel threshold, min area) chosen on validation by F1
    (`metrics.tune_cutoffs`) and the test figures and CIs at them."""
    cut = M.tune_cutoffs(val.top, val.labels, size)
    # The (A+1)-th largest pixel is the score of the tuned rule, as the k-th is the paper's.
    score = test.top[:, cut.min_area]
    rank = test.top_ranks[:, cut.min_area]
    dice = reported_dice(test, cut.pixel_threshold, score > cut.pixel_threshold)
    metrics, ci = figures(test.labels, score, cut.pixel_threshold, dice, rank, n_boot)
    return {**cut.as_dict(), "n_val": int(len(val.labels)), "metrics": metrics, "ci": ci}
