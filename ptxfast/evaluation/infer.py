"""Scoring one model over one split: the splits decoded once and shared by every model of an
evaluation, the model run through the fused forward the exported artifact runs
(`ptxfast.inference.forward.FusedScorer`) with its masks reduced on the device to pixel counts, and the
figures (METRIC_KEYS and their 95% CIs) at a threshold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ptxfast import metrics as M
from ptxfast.evaluation.results import METRIC_KEYS, EvalError
from ptxfast.inference.forward import FusedScorer

__all__ = ["Outputs", "SharedData", "figures", "infer", "reported_dice"]

# Decoded splits are kept in memory (fp16 images, uint8 masks) up to this size, so the eight
# models decode each DICOM once; larger splits are streamed from disk for every model.
_CACHE_BYTES = 3 << 30


class _Decoded(Dataset):
    """A split decoded once into memory; items as PTXDataset's (float32 image, mask, label)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.masks, self.labels = images, masks, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i].float(), self.masks[i].float(), self.labels[i]


class SharedData:
    """Splits and decoded datasets shared by every model of one evaluation."""

    def __init__(self, batch_size: int, workers: int) -> None:
        self.batch_size, self.workers = batch_size, workers
        self._splits: dict[tuple[str, int], dict] = {}
        self._sets: dict[tuple[str, int, str, int], Dataset] = {}

    def records(self, root: Path, seed: int, split: str) -> list:
        from ptxfast.data.datasets import ensure_splits

        key = (str(root), seed)
        if key not in self._splits:
            self._splits[key] = ensure_splits(root, seed=seed)
        return self._splits[key][split]

    def dataset(self, root: Path, seed: int, split: str, size: int) -> Dataset:
        from ptxfast.data.datasets import PTXDataset

        key = (str(root), seed, split, size)
        if key in self._sets:
            return self._sets[key]
        records = self.records(root, seed, split)
        if not records:
            raise EvalError(f"the {split} split of {root} is empty; remake it with `ptxfast split`")
        ds: Dataset = PTXDataset(records, size, with_mask=True)
        if len(records) * size * size * 3 <= _CACHE_BYTES:
            images, masks, labels = [], [], []
            for x, m, y in self.loader(ds):
                images.append(x.half())
                masks.append(m.to(torch.uint8))
                labels.append(y)
            ds = _Decoded(torch.cat(images), torch.cat(masks), torch.cat(labels))
        self._sets[key] = ds
        return ds

    def loader(self, ds: Dataset) -> DataLoader:
        workers = 0 if isinstance(ds, _Decoded) else self.workers
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=workers)


# ------------------------------------------------------------------------------- inference


@dataclass
class Outputs:
    """Per-image outputs of one model over one split (numpy, in split order)."""

    labels: np.ndarray
    scores: np.ndarray  # image probability, or a segmenter's k-th largest pixel probability
    ranks: np.ndarray  # the logits behind `scores`
    true_area: np.ndarray | None = None
    # Per pixel threshold: (|P∩T|, |P|) of the mask above it, N each.
    counts: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # Segmenters when tuning: the N×K largest pixel probabilities and their logits, descending.
    top: np.ndarray | None = None
    top_ranks: np.ndarray | None = None


def _numpy(*tensors: torch.Tensor) -> tuple[np.ndarray, ...]:
    return tuple(t.cpu().numpy() for t in tensors)


@torch.inference_mode()
def infer(
    model: torch.nn.Module,
    kind: str,
    loader: DataLoader,
    device: torch.device,
    thresholds: Sequence[float] = (),
    top_k: int = 0,
) -> Outputs:
    """Run `model` over `loader` through the fused forward; its masks are reduced on the device
    to counts per pixel threshold (and, with `top_k`, a segmenter's top pixels). Probabilities
    and the pixel counts come from the same mask on the same device, so labels agree with the
    counts to the last bit."""
    scorer = None
    labels, scores, true_area, tops = [], [], [], []
    counts: dict[float, tuple[list, list]] = {t: ([], []) for t in thresholds}
    for x, mask, y in loader:
        x = x.to(device, non_blocking=True)
        scorer = scorer or FusedScorer(model, kind, x.shape[-1])
        out = scorer(x)
        labels.append(y.numpy())
        scores.append(_numpy(out.prob, out.logit))
        if kind == "classifier":
            continue
        if top_k:
            top = torch.topk(out.raw.flatten(1), min(top_k, out.raw[0].numel()), dim=1).values
            tops.append(_numpy(torch.sigmoid(top), top))
        truth = mask.to(device).flatten(1) > 0.5
        true_area.append(truth.sum(1).cpu().numpy())
        flat = out.mask.flatten(1)
        for t in thresholds:
            pred = flat > t
            counts[t][0].append((pred & truth).sum(1).cpu().numpy())
            counts[t][1].append(pred.sum(1).cpu().numpy())
    result = Outputs(
        np.concatenate(labels).astype(int),
        np.concatenate([p for p, _ in scores]),
        np.concatenate([r for _, r in scores]),
    )
    if kind != "classifier":
        result.true_area = np.concatenate(true_area)
        result.counts = {t: (np.concatenate(i), np.concatenate(p)) for t, (i, p) in counts.items()}
    if tops:
        result.top = np.concatenate([p for p, _ in tops])
        result.top_ranks = np.concatenate([r for _, r in tops])
    return result


def reported_dice(out: Outputs, threshold: float, called: np.ndarray) -> M.DiceScores:
    """Dice of the reported masks: pixels above `threshold` where the image is called positive,
    nothing where it is not."""
    inter, area = out.counts[threshold]
    return M.dice_from_counts(np.where(called, inter, 0), np.where(called, area, 0), out.true_area)


def figures(
    labels: np.ndarray,
    score: np.ndarray,
    threshold: float,
    dice: M.DiceScores | None,
    ranks: np.ndarray,
    n_boot: int,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(METRIC_KEYS at `threshold`, their 95% CIs by `M.bootstrap_ci`)."""
    result = M.binary_metrics(labels, score, threshold, ranking=ranks)
    result["dice"] = dice.mean if dice is not None else math.nan
    result["dice_pos"] = dice.mean_positive if dice is not None else math.nan
    ci = M.bootstrap_ci(labels, score, threshold, ranking=ranks, n_boot=n_boot)
    return {k: result[k] for k in METRIC_KEYS}, ci
