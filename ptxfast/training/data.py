"""What training reads: the splits as datasets at the recipe's size, decoded images and a
cascade's frozen-segmenter masks cached per process, and the loaders (data order a function of
(seed, epoch) alone, so a resumed run sees what an uninterrupted one would)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ptxfast.models import kind_of
from ptxfast.recipes import TrainConfig, TrainError

__all__ = ["TrainData", "load_data", "make_loader", "prepare"]


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


def prepare(ds: Dataset, model: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
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


def make_loader(
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
