"""The paper's figures of an evaluation: confusion matrices, ROC curves with the operating
points marked, recall against F1, reliability diagrams, and per-model mask overlays of chosen
test images (TP, FN, FP, TN in turn), drawn by `ptxfast.plots`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ptxfast import metrics as M
from ptxfast import plots
from ptxfast.evaluation.results import ModelResult
from ptxfast.inference.forward import FusedScorer
from ptxfast.models import PIXEL_THRESHOLD

__all__ = ["overlay", "plot_all"]


def _pick(outcomes: np.ndarray, order: dict[str, np.ndarray], n: int) -> list[int]:
    """Up to n images, taking TP, FN, FP, TN in turn (each list in its own order of interest)."""
    queues = {k: [int(i) for i in order[k] if outcomes[i] == k] for k in ("TP", "FN", "FP", "TN")}
    chosen: list[int] = []
    while len(chosen) < n and any(queues.values()):
        for k in ("TP", "FN", "FP", "TN"):
            if queues[k] and len(chosen) < n:
                chosen.append(queues[k].pop(0))
    return chosen


@torch.inference_mode()
def overlay(
    model: torch.nn.Module,
    result: ModelResult,
    ds: Dataset,
    device: torch.device,
    n: int,
    batch_size: int,
    dice: np.ndarray,
    true_area: np.ndarray,
    captions: Sequence[str],
    path: Path,
) -> Path:
    """Overlay figure of up to n test images (the model is rerun on just those)."""
    y, s, rank = result.labels.astype(bool), result.scores, result.ranks
    pixel = float(result.cutoffs.get("pixel_threshold", PIXEL_THRESHOLD))
    called = s > (result.cutoffs.get("threshold", pixel))
    outcomes = np.where(y, np.where(called, "TP", "FN"), np.where(called, "FP", "TN"))
    order = {
        "TP": np.argsort(-true_area, kind="stable"),  # large pneumothoraces read best
        # By logit: probabilities of confident models tie at 1.0.
        "FN": np.argsort(rank, kind="stable"),  # the most confident misses
        "FP": np.argsort(-rank, kind="stable"),  # the most confident false alarms
        "TN": np.argsort(rank, kind="stable"),
    }
    idx = _pick(outcomes, order, n)
    scorer = FusedScorer(model, result.kind, result.size)
    preds = []
    for start in range(0, len(idx), batch_size):
        x = torch.stack([ds[i][0] for i in idx[start : start + batch_size]]).to(device)
        preds.append((scorer(x).mask[:, 0] > pixel).cpu().numpy())
    pred = np.concatenate(preds)
    tiles = [
        plots.OverlayTile(
            image=ds[i][0][0].numpy(),
            true_mask=ds[i][1][0].numpy() > 0.5,
            pred_mask=pred[j],
            outcome=str(outcomes[i]),
            score=float(s[i]),
            caption=_short(captions[i]),
            dice=float(dice[i]),
        )
        for j, i in enumerate(idx)
    ]
    what = (
        f"more than {result.cutoffs['min_area']} px with p > {pixel:g}"
        if result.kind == "segmenter"
        else f"p > {result.cutoffs['threshold']:g}, mask p > {pixel:g}"
    )
    return plots.overlay_grid(
        tiles,
        path,
        f"{result.name} ({result.kind}) on the test split: positive when {what}",
        score_name="score" if result.kind == "segmenter" else "p",
    )


def _short(image_id: str, keep: int = 18) -> str:
    return image_id if len(image_id) <= keep else "…" + image_id[-keep:]


def plot_all(results: Sequence[ModelResult], out: Path) -> dict[str, Path]:
    marks = [
        [
            plots.RocMark(
                1 - op["metrics"]["specificity"],
                op["metrics"]["recall"],
                f"recall ≥ {op['target_recall']:g} on val",
            )
            for op in r.operating_points
        ]
        for r in results
    ]
    files = {
        "confusion": plots.confusion_matrices(
            [(r.name, r.metrics) for r in results], out / "confusion.png"
        ),
        "roc": plots.roc_curves(
            [(r.name, r.kind, r.labels, r.ranks) for r in results], out / "roc.png", marks
        ),
    }
    points = [(r.name, r.kind, r.metrics["recall"], r.metrics["f1"]) for r in results]
    points += [
        (f"{r.name} (tuned)", r.kind, r.tuned["metrics"]["recall"], r.tuned["metrics"]["f1"])
        for r in results
        if r.tuned
    ]
    # The first target's operating points (more would crowd the figure; all are in the files).
    points += [
        (
            f"{r.name} ({plots.OPERATING_POINT} {r.operating_points[0]['target_recall']:g})",
            r.kind,
            r.operating_points[0]["metrics"]["recall"],
            r.operating_points[0]["metrics"]["f1"],
        )
        for r in results
        if r.operating_points
    ]
    files["recall_f1"] = plots.recall_f1(points, out / "recall_f1.png")
    calibrated = [r for r in results if r.calibration]
    if calibrated:
        files["reliability"] = plots.reliability_diagrams(
            [
                plots.ReliabilityPanel(
                    r.name,
                    M.reliability_bins(r.labels, M.calibrated(r.ranks, 1.0)),
                    M.reliability_bins(r.labels, M.calibrated(r.ranks, t)),
                    r.calibration["ece_test_before"],
                    r.calibration["ece_test_after"],
                    t,
                )
                for r in calibrated
                for t in [r.calibration["temperature"]]
            ],
            out / "reliability.png",
        )
    return files
