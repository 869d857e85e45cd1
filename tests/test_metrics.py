"""Metrics on hand-computed examples: image labels, Dice, the segmenter rule, tuning, parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptxfast.metrics import (
    area_grid,
    binary_metrics,
    dice,
    dice_from_counts,
    parity,
    seg_labels,
    sorted_labels,
    top_pixels,
    tune_cutoffs,
)
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
