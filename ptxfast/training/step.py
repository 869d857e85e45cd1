"""One step and one pass: how a batch becomes logits and a target (`Step`), the loss, the
mirror augmentation, `train_step`, `train_one_epoch`, and `evaluate`, which scores through the
fused forward the exported artifact runs (`ptxfast.inference.forward.FusedScorer`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptxfast.inference.forward import FusedScorer
from ptxfast.metrics import binary_metrics
from ptxfast.models import PIXEL_THRESHOLD, label_threshold

__all__ = [
    "CascadeOnMasks",
    "Step",
    "evaluate",
    "mirror",
    "soft_dice_loss",
    "train_one_epoch",
    "train_step",
    "training_loss",
]


class CascadeOnMasks(nn.Module):
    """Training view of a cascade whose masks come precomputed: (image, mask) → logits."""

    def __init__(self, cascade: nn.Module) -> None:
        super().__init__()
        self.cascade = cascade

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.cascade.classifier(torch.cat([x, x, mask], dim=1))


@dataclass
class Step:
    """How a batch (image, mask, label) becomes (logits, target) for one model kind and device."""

    kind: str  # "classifier", "segmenter" or "cascade"
    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype; None runs fp32
    channels_last: bool = False
    masks_given: bool = False  # the mask slot holds segmenter probabilities (cached cascades)
    loss: str = "bce"  # TrainConfig.loss
    hflip: float = 0.0  # TrainConfig.hflip: chance of mirroring each training image (and mask)

    def criterion(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of this model kind (see `training_loss`)."""
        return training_loss(logits, target, self.kind, self.loss)

    def autocast(self):
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        )

    def inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, mask, label) of a batch on the device, the image channels_last when asked."""
        x, mask, y = (t.to(self.device, non_blocking=True) for t in batch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, mask, y

    def __call__(self, module: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, mask, y = self.inputs(batch)
        with self.autocast():
            if self.kind == "segmenter":
                logits, target = module(x), mask
            elif self.masks_given:
                logits, target = module(x, mask), y[:, None]
            else:
                logits, target = module(x), y[:, None]
        return logits.float(), target, x.shape[0]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 − soft Dice of sigmoid(logits) against target, pooled over the whole batch.

    Pooling over the batch keeps the term defined on batches of negatives alone (any predicted
    area then costs), and it weighs a pneumothorax by its pixels, not by the ~99% background.
    """
    prob = torch.sigmoid(logits.float())
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + smooth) / (prob.sum() + target.sum() + smooth)


def training_loss(
    logits: torch.Tensor, target: torch.Tensor, kind: str, loss: str = "bce"
) -> torch.Tensor:
    """The loss one step minimises: BCE with logits, plus, for segmenters with
    `loss="bce+dice"`, the batch soft Dice loss (`TrainConfig.loss`)."""
    out = F.binary_cross_entropy_with_logits(logits, target)
    if loss == "bce+dice" and kind == "segmenter":
        out = out + soft_dice_loss(logits, target)
    return out


def mirror(batch, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mirror each (image, mask) pair of a batch left-right with chance `p` (the mask slot: the
    ground truth, or a cascade's cached segmenter output; an empty one stays empty). Draws
    from torch's global generator, whose state a checkpoint keeps, so a resumed run draws
    the same flips."""
    x, mask, y = batch
    flip = torch.rand(x.shape[0]) < p
    if not bool(flip.any()):
        return x, mask, y
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if mask.dim() == 4:
        mask = torch.where(flip[:, None, None, None], mask.flip(-1), mask)
    return x, mask, y


def train_step(
    module: nn.Module,
    batch,
    optimizer: torch.optim.Optimizer,
    step: Step,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, int]:
    """One optimizer step on one batch; returns the (detached, on-device) loss and batch size."""
    if step.hflip > 0:
        batch = mirror(batch, step.hflip)
    logits, target, n = step(module, batch)
    loss = step.criterion(logits, target)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), n


def train_one_epoch(
    module: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    step: Step,
    scaler: torch.amp.GradScaler | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> dict[str, float]:
    """One pass over `loader`; returns mean loss, images, seconds and images/s.

    `progress(images, loss, images_per_s)` is called every few steps; the loss is read from the
    device only then, so a GPU is not stalled by a synchronization per step.
    """
    module.train()
    total = torch.zeros((), device=step.device)
    images = 0
    start = time.perf_counter()
    for i, batch in enumerate(loader, start=1):
        loss, n = train_step(module, batch, optimizer, step, scaler)
        total += loss * n
        images += n
        if progress is not None and i % 5 == 0:
            progress(images, float(total) / images, images / (time.perf_counter() - start))
    mean = float(total) / max(images, 1)
    seconds = time.perf_counter() - start
    if progress is not None:
        progress(images, mean, images / max(seconds, 1e-9))
    return {"loss": mean, "images": images, "seconds": seconds, "images_per_s": images / seconds}


@torch.inference_mode()
def evaluate(module: nn.Module, loader: Iterable, step: Step) -> dict[str, float]:
    """Metrics of `module` over `loader`: loss (plain BCE, comparable across recipes), f1,
    recall, precision, auc, n (+ dice).

    Scored through the fused forward the exported artifact runs (`FusedScorer`), labelled by
    `models.label_threshold`: classifiers and cascades when the image probability is > 0.5;
    segmenters by the paper's rule (more than min_area(S) pixels above 0.3), scored by the k-th
    largest pixel probability so ROC-AUC ranks by the same rule, plus the mean Dice of the
    0.3-thresholded masks on the positive images. A cascade trained on cached masks
    (`CascadeOnMasks`) is scored whole, its segmenter run as the artifact runs it.
    """
    model = module.cascade if isinstance(module, CascadeOnMasks) else module
    model.eval()
    scorer = None
    losses, labels, scores, dices = [], [], [], []
    for batch in loader:
        x, mask, y = step.inputs(batch)
        scorer = scorer or FusedScorer(model, step.kind, x.shape[-1])
        with step.autocast():
            out = scorer(x)
        target = mask if step.kind == "segmenter" else y[:, None]
        losses.append(F.binary_cross_entropy_with_logits(out.raw, target, reduction="none"))
        scores.append(out.prob)
        labels.append(y)
        if step.kind == "segmenter":
            pred, truth = (out.mask > PIXEL_THRESHOLD).flatten(1), target.flatten(1) > 0.5
            dice = 2 * (pred & truth).sum(1) / (pred.sum(1) + truth.sum(1)).clamp(min=1)
            dices.append(dice[truth.any(1)])
    y = torch.cat(labels).cpu().numpy()
    s = torch.cat(scores).float().cpu().numpy()
    out = {"loss": float(torch.cat([v.flatten() for v in losses]).mean()), "n": int(len(y))}
    m = binary_metrics(y, s, label_threshold(step.kind))
    out.update({k: m[k] for k in ("f1", "recall", "precision", "auc")})
    if step.kind == "segmenter":
        d = torch.cat(dices)
        out["dice"] = float(d.mean()) if len(d) else math.nan
    return out
