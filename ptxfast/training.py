"""Training: the loop as small functions wired together.

`train_one_epoch` runs one pass of the recipe's loss (BCE with logits; segmenters may add soft
Dice) + Adam (AMP and channels_last on CUDA), `evaluate` scores a validation set under
`torch.inference_mode` and returns a dict of metrics, `fit` wires them together with negative
rotation, checkpoints (`last.pt` every epoch, `best.pt` by validation F1, ties to the higher
ROC-AUC), `summary.csv`, `recipe.toml`, `result.json` and exact `--resume`. Launched by
`torchrun` it trains with DistributedDataParallel; rank 0 alone writes files and prints.

Reproducibility: the order of the training data is a function of (seed, epoch) and the global RNG
states travel in `last.pt`, so a run stopped after epoch k and resumed ends with the same weights
as one that never stopped (same device, same number of workers).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ptxfast import MODEL_NAMES
from ptxfast.checkpoint import (
    CheckpointError,
    checkpoint_header,
    link_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    sha256_file,
)
from ptxfast.models import (
    PIXEL_THRESHOLD,
    apply_freezing,
    build,
    cascade_parts,
    imagenet_weights,
    kind_of,
    score_k,
    segmenter_score,
)
from ptxfast.recipes import (
    RESUME_FIXED,
    TrainConfig,
    TrainError,
    config_toml,
    load_recipe,
    recipe_path,
    with_overrides,
)

CLASSIFIER_THRESHOLD = 0.5  # image probability above which classifiers and cascades say positive


# ---------------------------------------------------------------------------------------- data


@dataclass
class TrainData:
    """What `fit` trains and validates on: items are (image 1×S×S, mask 1×S×S, label)."""

    train: Callable[[int], Dataset]  # epoch → that epoch's training items (negatives rotate)
    val: Dataset
    test: Dataset | None = None
    # True when the mask slot holds the frozen segmenter's probability (cascades with cached
    # masks): the loop then feeds it to the classifier instead of running the segmenter.
    segmenter_masks: bool = False
    notes: dict[str, Any] = field(default_factory=dict)


# Decoded images (and segmenter masks) shared by every run in this process, so `--arch all`
# decodes each DICOM once. Keys include the path and size; masks are keyed by segmenter sha256.
_IMAGE_CACHE: dict = {}
_MASK_CACHE: dict[tuple[str, str, int], torch.Tensor] = {}


class _SegmenterMasks(Dataset):
    """A PTXDataset whose mask slot holds the frozen segmenter's cached probability map."""

    def __init__(self, base: Dataset, sha: str) -> None:
        self.base, self.sha = base, sha

    def key(self, i: int) -> tuple[str, str, int]:
        return (self.sha, self.base.records[i].image_id, self.base.size)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, _, label = self.base[i]
        return image, _MASK_CACHE[self.key(i)], label

    @torch.inference_mode()
    def fill(self, segmenter: nn.Module, device: torch.device, batch: int) -> None:
        """Compute the masks of the items not cached yet (the segmenter is deterministic)."""
        todo = [i for i in range(len(self)) if self.key(i) not in _MASK_CACHE]
        for start in range(0, len(todo), batch):
            idx = todo[start : start + batch]
            x = torch.stack([self.base[i][0] for i in idx]).to(device)
            probs = torch.sigmoid(segmenter(x).float()).cpu()
            for i, p in zip(idx, probs, strict=True):
                _MASK_CACHE[self.key(i)] = p


def load_data(cfg: TrainConfig, segmenter: nn.Module | None = None, sha: str = "") -> TrainData:
    """Splits of `cfg.data` (made and written on first use) as datasets at `cfg.size`.

    With `segmenter` and `sha` (a cascade with cfg.cache_images and cfg.cache_masks), the mask
    slot carries the segmenter's probability, computed once per image; call `TrainData.train`
    and use `val`/`test` only after the segmenter is on its device.
    """
    from ptxfast.data.datasets import NegativeRotation, PTXDataset, ensure_splits

    if not cfg.data:
        raise TrainError("no dataset given; pass --data DIR (a CANDID-PTX or SIIM folder)")
    splits = ensure_splits(cfg.data, seed=cfg.seed)
    every = cfg.rotate_every if cfg.rotate_every > 0 else 1 << 30
    rotation = NegativeRotation.from_splits(
        splits, every=every, seed=cfg.seed, strategy=cfg.negatives
    )
    cache = _IMAGE_CACHE if cfg.cache_images else False
    # Cached items always carry the mask so one cache serves segmenters and classifiers alike.
    with_mask = cfg.cache_images or kind_of(cfg.arch) == "segmenter"

    def dataset(records) -> Dataset:
        ds = PTXDataset(records, cfg.size, with_mask=with_mask, cache=cache)
        return _SegmenterMasks(ds, sha) if segmenter is not None else ds

    return TrainData(
        train=lambda epoch: dataset(rotation.records(epoch)),
        val=dataset(splits["val"]),
        test=dataset(splits["test"]) if splits["test"] else None,
        segmenter_masks=segmenter is not None,
        notes={k: len(v) for k, v in splits.items()},
    )


def _prepare(ds: Dataset, model: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    """Decode cached images (and cascade masks) up front, in this process, so workers inherit
    them and the epoch timings measure training rather than first-time decoding."""
    if isinstance(ds, _SegmenterMasks):
        ds.fill(model.segmenter, device, 2 * cfg.batch_size)
    elif cfg.cache_images and cfg.workers > 0:
        for i in range(len(ds)):
            ds[i]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Data order depends on (seed, epoch) only, never on how many epochs ran in this process.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _loader(
    ds: Dataset,
    cfg: TrainConfig,
    device: torch.device,
    *,
    train: bool,
    epoch: int = 0,
    world: tuple[int, int] = (0, 1),
) -> DataLoader:
    rank, size = world
    batch = cfg.batch_size if train else 2 * cfg.batch_size
    sampler = None
    if train and size > 1:
        sampler = torch.utils.data.DistributedSampler(
            ds, num_replicas=size, rank=rank, shuffle=True, seed=cfg.seed
        )
        sampler.set_epoch(epoch)
    per_rank = math.ceil(len(ds) / size) if train else len(ds)
    return DataLoader(
        ds,
        batch_size=batch,
        shuffle=train and sampler is None,
        sampler=sampler,
        generator=_epoch_generator(cfg.seed, epoch) if train and sampler is None else None,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        # A lone last image would make BatchNorm fail on 1×1 statistics; drop it in training.
        drop_last=train and per_rank % batch == 1,
    )


# ---------------------------------------------------------------------------------------- loop


class _CascadeOnMasks(nn.Module):
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

    def __call__(self, module: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, mask, y = (t.to(self.device, non_blocking=True) for t in batch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
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


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """F1, recall, precision (at `threshold` on scores), ROC-AUC (nan with a single class)."""
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    labels = labels.astype(int)
    pred = (scores > threshold).astype(int)
    out = {
        "f1": f1_score(labels, pred, zero_division=0),
        "recall": recall_score(labels, pred, zero_division=0),
        "precision": precision_score(labels, pred, zero_division=0),
        "auc": roc_auc_score(labels, scores) if len(set(labels.tolist())) == 2 else math.nan,
    }
    return {k: float(v) for k, v in out.items()}


@torch.inference_mode()
def evaluate(module: nn.Module, loader: Iterable, step: Step) -> dict[str, float]:
    """Metrics of `module` over `loader`: loss (plain BCE, comparable across recipes), f1,
    recall, precision, auc, n (+ dice).

    Classifiers and cascades: image probability > 0.5. Segmenters: the paper's rule (more than
    min_area(S) pixels above 0.3), scored by the k-th largest pixel probability so ROC-AUC ranks
    by the same rule; plus the mean Dice of the 0.3-thresholded masks on the positive images.
    """
    module.eval()
    losses, labels, scores, dices = [], [], [], []
    for batch in loader:
        logits, target, _ = step(module, batch)
        losses.append(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))
        prob = torch.sigmoid(logits)
        if step.kind == "segmenter":
            scores.append(segmenter_score(prob, score_k(prob.shape[-1])))
            labels.append(batch[2].to(step.device))
            pred, truth = (prob > PIXEL_THRESHOLD).flatten(1), target.flatten(1) > 0.5
            dice = 2 * (pred & truth).sum(1) / (pred.sum(1) + truth.sum(1)).clamp(min=1)
            dices.append(dice[truth.any(1)])
        else:
            scores.append(prob[:, 0])
            labels.append(target[:, 0])
    y = torch.cat(labels).cpu().numpy()
    s = torch.cat(scores).float().cpu().numpy()
    threshold = PIXEL_THRESHOLD if step.kind == "segmenter" else CLASSIFIER_THRESHOLD
    out = {"loss": float(torch.cat([v.flatten() for v in losses]).mean()), "n": int(len(y))}
    out.update(binary_metrics(y, s, threshold))
    if step.kind == "segmenter":
        d = torch.cat(dices)
        out["dice"] = float(d.mean()) if len(d) else math.nan
    return out


# ------------------------------------------------------------------------------------- the fit


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"device {cfg.device} asked for but CUDA is not available; use cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when not launched."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def build_for_training(cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The model of `cfg`, frozen per `cfg.freezing` (BatchNorm momentum per
    `cfg.bn_momentum`), and what it was built from (a cascade's segmenter checkpoint path,
    sha256 and size; the freezing applied)."""
    weights = None if cfg.weights == "none" else cfg.weights
    info: dict[str, Any] = {}
    if kind_of(cfg.arch) != "cascade":
        model = build(cfg.arch, weights=weights)
    else:
        seg = cascade_parts(cfg.arch)[0]
        path = Path(cfg.segmenter) if cfg.segmenter else Path(cfg.runs) / seg / "best.pt"
        if not path.is_file():
            raise TrainError(
                f"{cfg.arch} needs its trained segmenter at {path}; run "
                f"`ptxfast train --arch {seg}` first (same --runs and --data)"
            )
        seg_state = load_checkpoint(path)
        if seg_state["model_args"].get("name") != seg:
            raise TrainError(
                f"{path} holds {seg_state['model_args'].get('name')!r}, not the {seg} "
                f"segmenter {cfg.arch} needs; retrain with `ptxfast train --arch {seg}`"
            )
        model = build(cfg.arch, weights=weights, segmenter_weights=seg_state["model"])
        info = {
            "segmenter_path": str(path),
            "segmenter_sha256": sha256_file(path),
            "segmenter_size": int(seg_state["model_args"].get("size", 0)),
        }
    pretrained = cfg.weights != "none" and (
        cfg.weights != "imagenet" or imagenet_weights(cfg.arch) is not None
    )
    freeze = cfg.freezing == "paper" or (cfg.freezing == "auto" and pretrained)
    if freeze:
        apply_freezing(model, cfg.arch)
    else:
        model.requires_grad_(True)
        if kind_of(cfg.arch) == "cascade":
            model.segmenter.requires_grad_(False)  # a cascade's segmenter is frozen by definition
    info["freezing_applied"] = "paper" if freeze else "none"
    if cfg.bn_momentum:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    return model, info


def write_untrained(
    runs: str | Path, name: str, size: int, *, seed: int = 0, note: str = ""
) -> Path:
    """RUNS/<name>/best.pt from a model never trained (weights drawn from `seed`, no ImageNet),
    in the format training writes, for checks where speed or plumbing is the point. A cascade is
    built over RUNS/<segmenter>/best.pt, written first when missing, and records that file's
    path and sha256 as a trained cascade does."""
    if kind_of(name) == "cascade":
        seg = cascade_parts(name)[0]
        if not (Path(runs) / seg / "best.pt").is_file():
            write_untrained(runs, seg, size, seed=seed, note=note)
    cfg = TrainConfig(arch=name, runs=str(runs), size=size, seed=seed, weights="none")
    torch.manual_seed(seed)
    model, info = build_for_training(cfg)
    state = {
        "model": model.state_dict(),
        "optimizer": {},
        "epoch": 0,
        "metric": 0.0,
        **checkpoint_header(name, size),
        "recipe": {**dataclasses.asdict(cfg), **info, **({"note": note} if note else {})},
    }
    return save_checkpoint(state, cfg.run_dir / "best.pt")


@dataclass
class _Run:
    """The state of one training run as `fit` moves it from epoch to epoch."""

    cfg: TrainConfig
    model: nn.Module  # the bare model (what checkpoints hold)
    module: nn.Module  # what is trained: the model, its cached-mask view, maybe in DDP
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: Step
    data: TrainData
    device: torch.device
    rank: int = 0
    world: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    start: int = 0  # epochs already done (resume)
    best: float = -math.inf  # the selection metric of the best epoch so far
    best_tie: float = -math.inf  # its tie-breaker (ROC-AUC, or F1 when selecting by AUC)
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def scorer(self) -> nn.Module:
        """The bare model as evaluation calls it (with cached masks: the mask-taking view)."""
        return _CascadeOnMasks(self.model) if self.data.segmenter_masks else self.model


def _setup(cfg: TrainConfig, data: TrainData | None, dist: tuple[int, int, int]) -> _Run:
    rank, world, local_rank = dist
    device = _device(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    model, info = build_for_training(cfg)
    cuda = device.type == "cuda"
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.amp) if cuda else None
    channels_last = cfg.channels_last and cuda
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if data is None:
        cached = kind_of(cfg.arch) == "cascade" and cfg.cache_images and cfg.cache_masks
        # Rank 0 makes splits.csv when it is missing; the others read it once it is there.
        if world > 1 and rank != 0:
            torch.distributed.barrier()
        data = load_data(cfg, model.segmenter if cached else None, info.get("segmenter_sha256", ""))
        if world > 1 and rank == 0:
            torch.distributed.barrier()
    step = Step(
        kind_of(cfg.arch),
        device,
        amp_dtype,
        channels_last,
        data.segmenter_masks,
        loss=cfg.loss,
        hflip=cfg.hflip,
    )
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    module: nn.Module = _CascadeOnMasks(model) if data.segmenter_masks else model
    if world > 1:
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if cuda else None
        )
    return _Run(cfg, model, module, optimizer, scaler, step, data, device, rank, world, info)


def _restore(run: _Run, path: Path) -> None:
    """Continue from `path` (last.pt): weights, optimizer, scaler, RNG, best-so-far, history."""
    state = load_checkpoint(path)
    saved = state["recipe"]
    changed = [k for k in RESUME_FIXED if k in saved and saved[k] != getattr(run.cfg, k)]
    if changed:
        what = ", ".join(f"{k} {saved[k]!r} → {getattr(run.cfg, k)!r}" for k in changed)
        raise TrainError(
            f"cannot resume {path} with a different recipe ({what}); keep the settings or train "
            "afresh without --resume"
        )
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    run.start, run.best, run.best_epoch = state["epoch"], state["best_metric"], state["best_epoch"]
    run.best_tie = state["best_tie"]
    run.history = list(state["history"])


def _progress_bar(console, description: str, total: int, world: int):
    """A rich progress bar and the callback train_one_epoch feeds (None, None when quiet)."""
    if console is None or not console.is_terminal:  # logs get the per-epoch lines only
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(description, total=total, loss=math.nan, ips=0.0)

    def update(images: int, loss: float, ips: float) -> None:
        bar.update(task, completed=images * world, loss=loss, ips=ips * world)

    return bar, update


def _train_epoch(run: _Run, epoch: int, console) -> dict[str, Any]:
    """Train and validate one epoch; returns its summary row (and updates the best-so-far)."""
    cfg = run.cfg
    train_ds = run.data.train(epoch)
    _prepare(train_ds, run.model, cfg, run.device)
    loader = _loader(
        train_ds, cfg, run.device, train=True, epoch=epoch, world=(run.rank, run.world)
    )
    label = f"{cfg.arch} {epoch + 1}/{cfg.epochs}"
    bar, progress = _progress_bar(console, label, len(loader.dataset), run.world)
    if bar is not None:
        bar.start()
    try:
        stats = train_one_epoch(run.module, loader, run.optimizer, run.step, run.scaler, progress)
    finally:
        if bar is not None:
            bar.stop()
    metrics = evaluate(run.scorer, _loader(run.data.val, cfg, run.device, train=False), run.step)
    score = _metric(metrics, cfg.select)
    # Small validation sets tie often (e.g. F1 of "all positive" for several epochs); the tie
    # goes to the better ranking rather than to the earliest, least trained epoch.
    tie = _metric(metrics, "f1" if cfg.select == "auc" else "auc")
    improved = (score, tie) > (run.best, run.best_tie)
    if improved:
        run.best, run.best_tie, run.best_epoch = score, tie, epoch + 1
    row = {
        "epoch": epoch + 1,
        "train_loss": stats["loss"],
        "train_images": stats["images"] * run.world,
        "images_per_s": stats["images_per_s"] * run.world,
        "seconds": stats["seconds"],
        **{f"val_{k}": v for k, v in metrics.items()},
        "best": int(improved),
    }
    run.history.append(row)
    return row


def _metric(metrics: dict[str, float], name: str) -> float:
    value = metrics.get(name, math.nan)
    return -math.inf if math.isnan(value) else value  # an undefined metric never wins


def _save(run: _Run, epoch: int) -> None:
    """last.pt (and best.pt when this epoch is the best) plus summary.csv; rank 0 only."""
    cfg, row = run.cfg, run.history[-1]
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "epoch": epoch + 1,
        "metric": _metric({k[4:]: v for k, v in row.items() if k.startswith("val_")}, cfg.select),
        **checkpoint_header(cfg.arch, cfg.size),
        "recipe": {**dataclasses.asdict(cfg), **run.info},
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
        "rng": rng_state(),
        "best_metric": run.best,
        "best_tie": run.best_tie,
        "best_epoch": run.best_epoch,
        "history": run.history,
        # Negatives are a pure function of the epoch (NegativeRotation.records), so the epoch
        # fixes the rotation; the block index is kept for people reading the checkpoint.
        "rotation_block": epoch // cfg.rotate_every if cfg.rotate_every else 0,
    }
    last = save_checkpoint(state, cfg.run_dir / "last.pt")
    if row["best"]:
        link_checkpoint(last, cfg.run_dir / "best.pt")
    _write_summary(run.history, cfg.run_dir / "summary.csv")


def _write_summary(history: list[dict[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    os.replace(tmp, path)


def _test(run: _Run) -> dict[str, float] | None:
    """Test-set metrics of best.pt (the model the run selected), or None without a test set."""
    best = run.cfg.run_dir / "best.pt"
    if run.data.test is None or not best.is_file():
        return None
    run.model.load_state_dict(load_checkpoint(best)["model"])
    _prepare(run.data.test, run.model, run.cfg, run.device)
    return evaluate(run.scorer, _loader(run.data.test, run.cfg, run.device, train=False), run.step)


def fit(
    cfg: TrainConfig,
    data: TrainData | None = None,
    *,
    resume: bool = False,
    console=None,
) -> dict[str, Any]:
    """Train `cfg.arch` per `cfg`; returns the best epoch and its validation and test metrics.

    `data` defaults to `load_data(cfg)`; tests pass small in-memory datasets. With `resume`,
    training continues from `<run_dir>/last.pt` (starting afresh when there is none). Writes
    last.pt, best.pt, summary.csv, recipe.toml and result.json to `cfg.run_dir`. Under torchrun
    (RANK / WORLD_SIZE set) it joins or starts the process group (nccl on CUDA, gloo on CPU).
    """
    rank, world, local_rank = _distributed()
    own_group = world > 1 and not torch.distributed.is_initialized()
    if own_group:
        cuda = _device(cfg, local_rank).type == "cuda"
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    threads = torch.get_num_threads()
    if cfg.threads and _device(cfg, local_rank).type == "cpu":
        torch.set_num_threads(cfg.threads)
    try:
        return _fit(cfg, data, resume, console if rank == 0 else None, (rank, world, local_rank))
    finally:
        torch.set_num_threads(threads)
        if own_group:
            torch.distributed.destroy_process_group()


def _fit(cfg, data, resume, console, dist) -> dict[str, Any]:
    say = console.print if console is not None else (lambda *a, **k: None)
    started = time.perf_counter()
    run = _setup(cfg, data, dist)
    last = cfg.run_dir / "last.pt"
    if resume and last.is_file():
        _restore(run, last)
        say(f"[bold]{cfg.arch}[/]: resuming after epoch {run.start} from {last}")
    elif resume:
        say(f"[bold]{cfg.arch}[/]: no {last} to resume; starting afresh")
    if run.info.get("segmenter_size") not in (None, cfg.size):
        say(f"[yellow]warning:[/] {cfg.arch}: segmenter trained at {run.info['segmenter_size']}²")
    if run.rank == 0:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "recipe.toml").write_text(config_toml(cfg, run.info))
    if run.data.notes:
        say(f"[bold]{cfg.arch}[/]: " + ", ".join(f"{k} {v}" for k, v in run.data.notes.items()))
    _prepare(run.data.val, run.model, cfg, run.device)

    for epoch in range(run.start, cfg.epochs):
        row = _train_epoch(run, epoch, console)
        if run.rank == 0:
            _save(run, epoch)
        say(_epoch_line(cfg, row))

    if run.world > 1:
        torch.distributed.barrier()  # best.pt is complete before anyone reads it
    result = {
        "arch": cfg.arch,
        "run_dir": str(cfg.run_dir),
        "epochs": cfg.epochs,
        "best_epoch": run.best_epoch,
        "select": cfg.select,
        "best_metric": run.best,
        "val": next((r for r in run.history if r["epoch"] == run.best_epoch), {}),
        "test": _test(run) if run.rank == 0 else None,
        "seconds": round(time.perf_counter() - started, 1),  # this process: build, data, epochs
        **run.info,
    }
    if run.rank == 0:
        (cfg.run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    if result["test"] is not None:
        t = result["test"]
        say(
            f"[bold]{cfg.arch}[/] test (best epoch {run.best_epoch}): F1 {t['f1']:.3f}  "
            f"recall {t['recall']:.3f}  precision {t['precision']:.3f}  AUC {t['auc']:.3f}  "
            f"n {t['n']}"
        )
    return result


def _epoch_line(cfg: TrainConfig, row: dict[str, Any]) -> str:
    dice = f"  dice {row['val_dice']:.3f}" if "val_dice" in row else ""
    mark = "  [green]best[/]" if row["best"] else ""
    return (
        f"[bold]{cfg.arch}[/] epoch {row['epoch']}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
        f"val F1 {row['val_f1']:.3f}  recall {row['val_recall']:.3f}  AUC {row['val_auc']:.3f}"
        f"{dice}  {row['images_per_s']:.1f} img/s  {row['seconds']:.1f}s{mark}"
    )


def train_models(
    arch: str,
    recipe: str | Path = "paper",
    *,
    resume: bool = False,
    console=None,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Train one model, or all eight (`arch="all"`, segmenters before their cascades).

    `overrides` replace recipe settings (data, runs, epochs, size, batch_size, lr, device,
    workers, seed, weights); None values keep the recipe's.
    """
    if arch != "all" and arch not in MODEL_NAMES:
        raise TrainError(f"unknown model {arch!r}; choose one of: {', '.join(MODEL_NAMES)} or all")
    if arch == "all" and overrides.get("weights") not in (None, "imagenet", "none"):
        raise TrainError("--weights PATH fits one architecture; use it with a single --arch")
    # MODEL_NAMES lists classifiers, then segmenters, then the cascades that need them.
    names = MODEL_NAMES if arch == "all" else (arch,)
    recipe_path(recipe)  # a wrong recipe name fails before anything trains
    results = []
    for name in names:
        cfg = with_overrides(load_recipe(recipe, name), **overrides)
        results.append(fit(cfg, resume=resume, console=console))
    return results


__all__ = [
    "CheckpointError",
    "Step",
    "TrainConfig",
    "TrainData",
    "TrainError",
    "binary_metrics",
    "build_for_training",
    "evaluate",
    "fit",
    "load_data",
    "load_recipe",
    "mirror",
    "soft_dice_loss",
    "train_models",
    "train_one_epoch",
    "train_step",
    "training_loss",
    "with_overrides",
    "write_untrained",
]
