"""The parity gate: an artifact's outputs against eager fp32's on the same labelled batches.

`collect_outputs` runs a predictor over the batches (probabilities, areas, per-image Dice),
`compare_outputs` measures two of them with the one parity function (`ptxfast.metrics.parity`,
its key names everywhere), and `gate` lists the tolerances the figures break.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ptxfast.export.config import ExportError, Tolerance
from ptxfast.inference.runtime import Predictor
from ptxfast.metrics import dice_from_counts, parity
from ptxfast.models import PIXEL_THRESHOLD


@contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off while measuring: the eager reference must be true fp32 on Ampere and newer."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def collect_outputs(predictor: Predictor, batches) -> dict[str, np.ndarray | None]:
    """A predictor's probabilities, areas and (where it has a mask output and the batches carry
    true masks) per-image Dice against the truth, over labelled (images, labels[, masks])
    batches; with the labels. Masks are reduced to counts per batch, never kept."""
    probs, areas, labels, inter, pred_area, true_area = [], [], [], [], [], []
    with strict_fp32():
        for x, y, *rest in batches:
            truth = rest[0] if rest and predictor.mask_output else None
            out = predictor(x, with_mask=truth is not None)
            probs.append(out.prob.float().cpu().numpy())
            areas.append(out.area.cpu().numpy())
            labels.append(y.flatten().cpu().numpy())
            if truth is not None:
                pred = (out.mask.float().cpu() > PIXEL_THRESHOLD).flatten(1)
                true = truth.bool().flatten(1)
                inter.append((pred & true).sum(1).numpy())
                pred_area.append(pred.sum(1).numpy())
                true_area.append(true.sum(1).numpy())
    if not labels:
        raise ExportError("no parity data (0 images); pass --data DIR or a positive --parity-n")
    counts = [np.concatenate(c) for c in (inter, pred_area, true_area)] if inter else None
    return {
        "prob": np.concatenate(probs),
        "area": np.concatenate(areas),
        "labels": np.concatenate(labels).astype(int),
        "dice": dice_from_counts(*counts).per_image if counts else None,
    }


def compare_outputs(
    candidate: dict[str, Any], reference: dict[str, Any], threshold: float
) -> dict[str, Any]:
    """`metrics.parity` of two `collect_outputs` results (same batches)."""
    return parity(
        reference["prob"], candidate["prob"], reference["labels"], threshold,
        ref_areas=reference["area"], areas=candidate["area"],
        ref_dice=reference["dice"] if candidate["dice"] is not None else None,
        dice=candidate["dice"],
    )  # fmt: skip


def gate(figures: dict[str, Any], tolerance: Tolerance) -> list[str]:
    """The tolerances `figures` break, as readable phrases (empty: the artifact passes).
    Figures that were not measured (None: no second class for AUC, no masks for Dice) pass."""
    failed = []
    if not figures["agreement"] >= tolerance.min_agreement:
        failed.append(f"label agreement {figures['agreement']:.2%} < {tolerance.min_agreement:.2%}")
    limits = (
        ("delta_f1", "ΔF1", tolerance.max_df1),
        ("delta_recall", "Δrecall", tolerance.max_drecall),
        ("delta_auc", "ΔROC-AUC", tolerance.max_dauc),
        ("delta_dice", "ΔDice", tolerance.max_ddice),
    )
    for key, label, limit in limits:
        value = figures.get(key)
        if limit is not None and value is not None and not abs(value) <= limit:
            failed.append(f"|{label}| {abs(value):.4f} > {limit:g}")
    if not figures["max_abs_diff"] <= tolerance.max_dprob:
        failed.append(f"max |Δprob| {figures['max_abs_diff']:.3g} > {tolerance.max_dprob:g}")
    return failed
