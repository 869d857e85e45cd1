"""Metrics on hand-computed examples: image labels, Dice, the segmenter rule, tuning, parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptxfast.metrics import (
    CI_METRICS,
    area_grid,
    binary_metrics,
    bootstrap_ci,
    calibrate,
    calibrated,
    dice,
    dice_from_counts,
    expected_calibration_error,
    fit_temperature,
    operating_point,
    parity,
    reliability_bins,
    seg_labels,
    sorted_labels,
    threshold_for_recall,
    top_pixels,
    tune_cutoffs,
    wilson_interval,
)
from ptxfast.metrics.images import _auc
from ptxfast.models import PIXEL_THRESHOLD, min_area, score_k, segmenter_score

LABELS = np.array([1, 1, 1, 0, 0, 0, 0, 1])
SCORES = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4, 0.7])


# ------------------------------------------------------------------------------ binary_metrics


def test_binary_metrics_hand_computed():
    m = binary_metrics(LABELS, SCORES, 0.5)
    # predicted [1 1 0 1 0 0 0 1]: TP 3 (0, 1, 7), FN 1 (2), FP 1 (3), TN 3.
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (3, 1, 1, 3)
    assert m["f1"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(6 / 8)
    # 16 positive-negative pairs; only 0.3 < 0.6 and 0.3 < 0.4 are misordered.
    assert m["auc"] == pytest.approx(14 / 16)
    assert (m["n"], m["n_pos"]) == (8, 4)


def test_binary_metrics_edges():
    perfect = binary_metrics([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9], 0.25)
    assert perfect["auc"] == 1.0 and perfect["f1"] == 1.0
    # A score equal to the threshold is negative (strictly greater is positive).
    at = binary_metrics([1, 0], [0.5, 0.2], 0.5)
    assert at["tp"] == 0 and at["fn"] == 1 and at["recall"] == 0.0 and at["precision"] == 0.0
    one_class = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2], 0.5)
    assert math.isnan(one_class["auc"]) and one_class["fp"] == 1 and one_class["f1"] == 0.0
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        binary_metrics([0, 1, 1], [0.1, 0.2], 0.5)


def test_binary_metrics_compares_in_the_scores_precision():
    # float32(0.3) is 0.30000001…: torch and the metrics agree that it is not > 0.3.
    s = np.array([0.3, 0.31], dtype=np.float32)
    m = binary_metrics([1, 1], s, 0.3)
    assert m["tp"] == int((torch.from_numpy(s) > 0.3).sum()) == 1


# ---------------------------------------------------------------------------------- parity


def test_parity_identical_and_one_flip():
    ref = np.array([0.9, 0.2, 0.7, 0.4], dtype=np.float32)
    y = [1, 0, 1, 0]
    same = parity(ref, ref.copy(), y, 0.5)
    assert same["agreement"] == 1.0 and same["n_disagree"] == 0
    assert same["delta_f1"] == 0.0 and same["delta_recall"] == 0.0 and same["max_abs_diff"] == 0.0
    flipped = parity(ref, np.array([0.9, 0.2, 0.45, 0.4]), y, 0.5)
    assert flipped["agreement"] == pytest.approx(0.75) and flipped["n_disagree"] == 1
    assert flipped["f1_ref"] == pytest.approx(1.0) and flipped["f1"] == pytest.approx(2 / 3)
    assert flipped["delta_f1"] == pytest.approx(-1 / 3)
    assert flipped["delta_recall"] == pytest.approx(-0.5)
    assert flipped["max_abs_diff"] == pytest.approx(0.25, abs=1e-6)


# ------------------------------------------------------------------------------------ Dice


def test_dice_cases():
    shape = (4, 4, 4)
    pred, true = np.zeros(shape, bool), np.zeros(shape, bool)
    # 0: empty vs empty → 1.  1: missed mask → 0.  2: mask on a negative → 0.
    true[1, 0, :2] = True
    pred[2, 3, 3] = True
    # 3: |P| = |T| = 4, overlap 2 → 2·2 / 8.
    pred[3, 0, :4] = True
    true[3, 0, 2:4] = True
    true[3, 1, :2] = True
    d = dice(pred, true)
    np.testing.assert_allclose(d.per_image, [1.0, 0.0, 0.0, 0.5])
    assert d.mean == pytest.approx(1.5 / 4)
    assert d.mean_positive == pytest.approx(0.25) and d.n_positive == 2
    assert dice(pred[:, None], true[:, None]).per_image.tolist() == d.per_image.tolist()
    counts = dice_from_counts([0, 0, 0, 2], [0, 0, 1, 4], [0, 2, 0, 4])
    assert counts.per_image.tolist() == d.per_image.tolist()
    no_pos = dice(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
    assert no_pos.mean == 1.0 and math.isnan(no_pos.mean_positive)
    with pytest.raises(ValueError, match="shapes differ"):
        dice(pred, true[:2])


# ------------------------------------------------------------------------- the segmenter rule


def _masks(n: int, size: int, seed: int) -> np.ndarray:
    """Probability maps whose area above 0.3 straddles min_area(size)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.29, size=(n, 1, size, size)).astype(np.float32)
    area = min_area(size)
    for i in range(n):
        k = int(rng.integers(max(0, area - 3), area + 4))
        p[i, 0].flat[rng.choice(size * size, k, replace=False)] = rng.uniform(0.31, 1.0, k)
    return p


@pytest.mark.parametrize("size", [64, 128])
def test_seg_labels_equal_the_kth_score_rule(size):
    p = _masks(24, size, seed=size)
    area = min_area(size)
    labels = seg_labels(p, PIXEL_THRESHOLD, area)
    counts = (p > PIXEL_THRESHOLD).reshape(24, -1).sum(1)
    assert labels.tolist() == (counts > area).tolist() and 0 < labels.sum() < 24
    score = segmenter_score(torch.from_numpy(p), score_k(size)).numpy()
    assert labels.tolist() == (score > PIXEL_THRESHOLD).tolist()
    top = top_pixels(p, area + 5)
    assert top.shape == (24, area + 5) and np.all(np.diff(top, axis=1) <= 0)
    np.testing.assert_array_equal(top[:, area], score)
    assert sorted_labels(top, PIXEL_THRESHOLD, area).tolist() == labels.tolist()


def test_seg_labels_boundary_is_more_than_min_area():
    size = 64
    area = min_area(size)
    p = np.zeros((2, size, size), np.float32)
    p[0].flat[:area] = 0.9  # exactly min_area pixels: negative
    p[1].flat[: area + 1] = 0.9  # one more: positive
    assert seg_labels(p, PIXEL_THRESHOLD, area).tolist() == [False, True]


# ------------------------------------------------------------------------------------ tuning


def test_area_grid_scales_the_paper_areas():
    assert 375 in area_grid(512) and 0 in area_grid(512)
    assert min_area(64) in area_grid(64)
    assert area_grid(64) == (0, 1, 2, 3, 6, 8, 12, 16, 23, 31, 47)


def test_tune_cutoffs_finds_a_planted_optimum():
    size, n = 64, 12
    y = np.arange(n) % 2
    p = np.zeros((n, size, size), np.float32)
    for i in range(n):
        if y[i]:
            p[i].flat[:20] = 0.65  # positives: 20 px in (0.6, 0.7]
        else:
            p[i].flat[:10] = 0.65  # negatives: 10 px there, plus 200 px at 0.55
            p[i].flat[10:210] = 0.55
    # Only t = 0.6 with 10 <= area < 20 separates them: areas 12 and 16 on the 64² grid; the
    # tie goes to the one nearer the paper's min_area(64) = 6.
    cut = tune_cutoffs(p, y, size)
    assert (cut.pixel_threshold, cut.min_area, cut.f1) == (0.6, 12, 1.0)
    assert cut.grid.shape == (9, len(area_grid(size)))
    assert cut.grid[cut.thresholds.index(0.3), cut.areas.index(6)] < 1.0
    same = tune_cutoffs(top_pixels(p, 48), y, size)
    assert (same.pixel_threshold, same.min_area) == (0.6, 12)


def test_tune_cutoffs_keeps_the_paper_rule_on_a_flat_surface():
    p = np.ones((4, 1, 64, 64), np.float32)
    cut = tune_cutoffs(p, [1, 1, 1, 1], 64)
    assert (cut.pixel_threshold, cut.min_area) == (PIXEL_THRESHOLD, min_area(64))
    assert cut.as_dict() == {"pixel_threshold": 0.3, "min_area": 6, "val_f1": 1.0}


# ----------------------------------------------------------------------- operating points


def test_threshold_for_recall_picks_the_highest_threshold():
    # Positives 0.9 0.8 0.7 0.3 (sorted), negatives 0.6 0.4 0.2 0.1.
    op = threshold_for_recall(LABELS, SCORES, 0.75)
    # 3 of 4 positives need s > t: t just below 0.7, above the next score 0.6.
    assert op.threshold == pytest.approx(0.65) and op.reached and not op.note
    assert op.recall == 0.75 and op.specificity == 1.0  # every negative is below 0.65
    assert binary_metrics(LABELS, SCORES, op.threshold)["recall"] >= 0.75
    # Any higher threshold loses the target: the choice is the highest that holds.
    assert binary_metrics(LABELS, SCORES, 0.7)["recall"] < 0.75
    full = threshold_for_recall(LABELS, SCORES, 1.0)
    assert full.threshold == pytest.approx(0.25) and full.recall == 1.0
    # 0.9 of 4 positives is 4 of them (ceil), 0.5 is 2.
    assert threshold_for_recall(LABELS, SCORES, 0.9).threshold == full.threshold
    assert threshold_for_recall(LABELS, SCORES, 0.5).threshold == pytest.approx(0.75)


def test_threshold_for_recall_ties_and_edges():
    # Two positives and a negative tie at 0.5: all three are called together.
    y = [1, 1, 1, 0, 0]
    s = [0.9, 0.5, 0.5, 0.5, 0.1]
    op = threshold_for_recall(y, s, 0.5)  # 2 of 3 positives: the tie brings both
    assert op.threshold == pytest.approx(0.3) and op.recall == 1.0 and op.specificity == 0.5
    # The lowest score is a positive: the threshold sits between it and 0.
    low = threshold_for_recall([1, 0, 1], [0.2, 0.6, 0.9], 1.0)
    assert low.threshold == pytest.approx(0.1) and low.recall == 1.0
    # float32 neighbours: the midpoint rounds onto one of them, so the lower one is taken.
    a = np.float32(0.5)
    b = np.nextafter(a, np.float32(1))
    tight = threshold_for_recall([1, 0], np.array([b, a], dtype=np.float32), 1.0)
    assert binary_metrics([1, 0], np.array([b, a], dtype=np.float32), tight.threshold)["fp"] == 0
    assert tight.recall == 1.0


def test_threshold_for_recall_unreachable_and_all_negative():
    # A positive whose probability saturated at 0 is below every threshold in [0, 1).
    op = threshold_for_recall([1, 1, 0], [0.8, 0.0, 0.3], 1.0)
    assert op.threshold == 0.0 and not op.reached and op.recall == 0.5
    assert "out of reach" in op.note and "1 of 2 positives" in op.note
    with pytest.raises(ValueError, match="no positives"):
        threshold_for_recall([0, 0, 0], [0.1, 0.5, 0.9], 0.9)
    with pytest.raises(ValueError, match="must be in"):
        threshold_for_recall(LABELS, SCORES, 1.5)


def test_operating_point_applies_the_validation_threshold_to_test():
    res = operating_point(LABELS, SCORES, [1, 0, 1], [0.66, 0.64, 0.2], 0.75, n_boot=200)
    assert res["threshold"] == pytest.approx(0.65) and res["chosen_on"] == "val"
    assert res["test"]["recall"]["value"] == 0.5 and res["test"]["specificity"]["value"] == 1.0
    assert res["val"]["recall"]["value"] == 0.75


# ------------------------------------------------------------------- confidence intervals


def _constructed(n_pos: int, n_neg: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    s = np.r_[rng.normal(1.0, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
    return y, 1 / (1 + np.exp(-s))


def test_auc_matches_scikit_learn_with_ties_and_weights():
    from sklearn.metrics import roc_auc_score

    y = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    s = np.array([0.5, 0.5, 0.9, 0.1, 0.3, 0.9, 0.7, 0.2])
    assert binary_metrics(y, s, 0.5)["auc"] == pytest.approx(roc_auc_score(y, s))
    # Weights as draw counts: equal to repeating the images.
    pw, nw = np.array([[2, 0, 1, 1]]), np.array([[1, 3, 0, 0]])
    rep = np.r_[np.repeat(s[y == 1], pw[0]), np.repeat(s[y == 0], nw[0])]
    rep_y = np.r_[np.ones(pw.sum()), np.zeros(nw.sum())]
    assert _auc(s[y == 1], s[y == 0], pw, nw)[0] == pytest.approx(roc_auc_score(rep_y, rep))


def test_bootstrap_ci_holds_the_estimate_and_shrinks_with_n():
    widths = {}
    for n_pos in (10, 40, 160):
        y, p = _constructed(n_pos, 5 * n_pos)
        ci = bootstrap_ci(y, p, 0.5, n_boot=2000, seed=0)
        assert ci == bootstrap_ci(y, p, 0.5, n_boot=2000, seed=0)  # seeded
        point = binary_metrics(y, p, 0.5)
        for k in CI_METRICS:
            assert ci[k]["value"] == pytest.approx(point[k])
            assert ci[k]["lo"] <= ci[k]["value"] <= ci[k]["hi"], k
        for k in ("recall", "specificity", "precision", "npv"):
            assert 0 <= ci[k]["wilson_lo"] <= ci[k]["value"] <= ci[k]["wilson_hi"] <= 1
        widths[n_pos] = {k: ci[k]["hi"] - ci[k]["lo"] for k in CI_METRICS}
    for k in CI_METRICS:
        assert widths[10][k] > widths[40][k] > widths[160][k], k
    # Stratified: each resample keeps the number of positives, so with all positives called
    # recall never varies.
    y, p = _constructed(10, 50)
    assert bootstrap_ci(y, p, -1.0, n_boot=100)["recall"] == pytest.approx(
        {
            "value": 1.0,
            "lo": 1.0,
            "hi": 1.0,
            "wilson_lo": wilson_interval(10, 10)[0],
            "wilson_hi": 1.0,
        }
    )


def test_wilson_interval_known_value():
    # 7 of 7: the textbook Wilson lower bound is 0.646.
    lo, hi = wilson_interval(7, 7)
    assert lo == pytest.approx(0.6457, abs=1e-3) and hi == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_bootstrap_is_fast_at_the_papers_test_size():
    import time

    y, p = _constructed(320, 1600)
    t0 = time.perf_counter()
    bootstrap_ci(y, p, 0.5, n_boot=2000)
    assert time.perf_counter() - t0 < 5.0  # vectorised: well under a second on one core


# ------------------------------------------------------------------------------ calibration


def test_temperature_scaling_lowers_ece_on_overconfident_scores():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(0.0, 1.5, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    over = 4.0 * true_logit  # an overconfident model: logits 4x too large
    t = fit_temperature(over, y)
    assert t == pytest.approx(4.0, rel=0.15)
    before = expected_calibration_error(y, calibrated(over, 1.0))
    after = expected_calibration_error(y, calibrated(over, t))
    assert after < before / 2
    cal = calibrate(over[:2000], y[:2000], over[2000:], y[2000:])
    assert cal.ece_test_after < cal.ece_test_before and cal.ece_val_after < cal.ece_val_before
    with pytest.raises(ValueError, match="both positives and negatives"):
        fit_temperature([1.0, 2.0], [1, 1])


def test_reliability_bins_and_ece_by_hand():
    b = reliability_bins([0, 1, 1, 0], [0.05, 0.15, 0.95, 1.0], bins=10)
    assert b["count"][0] == 1 and b["count"][1] == 1 and b["count"][9] == 2
    assert b["frequency"][9] == 0.5 and b["confidence"][9] == pytest.approx(0.975)
    # |0 − 0.05|, |1 − 0.15|, 2 × |0.5 − 0.975| over 4 images.
    expect = (0.05 + 0.85 + 2 * 0.475) / 4
    assert expected_calibration_error([0, 1, 1, 0], [0.05, 0.15, 0.95, 1.0]) == pytest.approx(
        expect
    )
