"""Datasets: the torch `PTXDataset` of a list of Records, and the front of the dataset modules.

`records` indexes CANDID-PTX / SIIM-ACR into `Record`s (one per image, its RLEs merged),
`splits` makes and keeps the paper's splits in `splits.csv`, and `rotation` schedules the
negatives each epoch trains on. What the stages that take a dataset folder need from them
(`DatasetError`, `DatasetWarning`, `load_records`, `ensure_splits`, `NegativeRotation`) is
importable from here too. Splits and rotation order images by `seeded.rank`, a hash of
`(seed, key)`, so both can be recomputed exactly on resume.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

import numpy as np
import torch

from ptxfast.data.dicom import load_image
from ptxfast.data.records import DatasetError, DatasetWarning, Record, load_records
from ptxfast.data.resize import resize
from ptxfast.data.rotation import NegativeRotation
from ptxfast.data.splits import ensure_splits

# What the stages that take a dataset folder need, importable from one place.
__all__ = [
    "DatasetError",
    "DatasetWarning",
    "NegativeRotation",
    "PTXDataset",
    "ensure_splits",
    "load_records",
]


class PTXDataset(torch.utils.data.Dataset):
    """Images, masks and labels of a list of Records at `size`×`size`.

    Item: (image float32 1×S×S in [0, 1], mask float32 1×S×S in {0, 1}, label float32 0-d).
    The mask is the union of the RLEs decoded at the image's own shape, area-averaged to S×S and
    thresholded at 0.5. With `with_mask=False` no RLE is decoded and the mask is an empty tensor
    (shape (0,)), so items keep the same three fields. Holds no open files (worker-safe).

    `cache=True` keeps decoded items in memory (image as float16, mask as uint8), which saves
    re-decoding the same few hundred DICOMs every epoch of a small CPU run; pass a dict to share
    one cache between datasets (e.g. across negative-rotation blocks). Each DataLoader worker has
    its own copy, so the cache pays off with `num_workers=0` or `persistent_workers=True`.
    """

    def __init__(
        self,
        records: Sequence[Record],
        size: int,
        with_mask: bool = True,
        cache: bool | MutableMapping = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.records = list(records)
        self.size = size
        self.with_mask = with_mask
        self.cache: MutableMapping | None = {} if cache is True else (cache or None)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, record: Record) -> tuple[np.ndarray, np.ndarray | None]:
        image, info = load_image(record.path, self.size)
        if not self.with_mask:
            return image, None
        if not record.rles:
            return image, np.zeros((self.size, self.size), dtype=np.uint8)
        shape = (int(info.rows), int(info.columns))
        area = resize(record.mask(shape), self.size)
        return image, (area >= 0.5).astype(np.uint8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        record = self.records[index]
        key = (record.image_id, str(record.path), self.size, self.with_mask)
        if self.cache is not None and key in self.cache:
            image, mask = self.cache[key]
        else:
            image, mask = self._load(record)
            if self.cache is not None:
                image = image.astype(np.float16)
                self.cache[key] = (image, mask)
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        if mask is None:
            mask_t = torch.empty(0, dtype=torch.float32)
        else:
            mask_t = torch.from_numpy(mask.astype(np.float32))[None]
        return image_t, mask_t, torch.tensor(float(record.label), dtype=torch.float32)
