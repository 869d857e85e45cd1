"""The labelled images the parity gate runs on: a dataset's validation split, else phantoms.

`phantom_batches` draws synthetic radiographs in memory (every sixth positive, the validation
split's 1 : 5, with their true masks); `dataset_batches` reads a dataset's validation split;
`gate_data` chooses between them for an export (--data, the recipe's dataset, phantoms).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptxfast.export.config import ExportConfig, ExportError


def _phantom_image(i: int, size: int, seed: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Phantom i (every sixth positive, the validation split's 1 : 5) as [0, 1] at size², its
    label and its true mask (uint8, resized like the dataset's: area mean >= 0.5)."""
    from ptxfast.data.dicom import resize
    from ptxfast.data.phantom import make_phantom

    rng = np.random.default_rng([seed, i, 0xE4])
    label = int(i % 6 == 0)
    # Drawn at least at 256² (where the anatomy is resolved) and area-resized like the dataset.
    image, masks, _ = make_phantom(rng, max(size, 256), label)
    # The window the dataset writer stores: body percentiles, so the [0, 1] range matches.
    lo, hi = np.percentile(image[::7, ::7].astype(np.float32), [0.2, 99.9])
    hi = max(hi, lo + 64.0)
    scaled = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    union = np.zeros(image.shape, np.float32)
    for m in masks:
        union = np.maximum(union, m.astype(np.float32))
    if scaled.shape[0] != size:
        scaled, union = resize(scaled, size), resize(union, size)
    return scaled, label, (union >= 0.5).astype(np.uint8)


def phantom_batches(
    n: int, size: int, batch: int, seed: int = 0, *, masks: bool = False
) -> Iterator[tuple[torch.Tensor, ...]]:
    """`n` labelled synthetic radiographs at size², in memory, as (images N×1×S×S, labels N)
    batches, or with `masks` (images, labels, true masks N×1×S×S uint8)."""
    for start in range(0, n, batch):
        items = [_phantom_image(i, size, seed) for i in range(start, min(n, start + batch))]
        x = torch.from_numpy(np.stack([im for im, _, _ in items]))[:, None]
        y = torch.tensor([lab for _, lab, _ in items], dtype=torch.float32)
        if masks:
            yield x, y, torch.from_numpy(np.stack([m for _, _, m in items]))[:, None]
        else:
            yield x, y


def dataset_batches(
    root: Path, size: int, batch: int, seed: int = 0
) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], int]:
    """The validation split of `root` at size² as (images, labels, true masks) batches, and its
    length."""
    from ptxfast.data.datasets import DatasetError, PTXDataset, ensure_splits

    try:
        records = ensure_splits(root, seed=seed)["val"]
    except (DatasetError, OSError) as err:
        raise ExportError(f"cannot read the validation split of {root}: {err}") from None
    if not records:
        raise ExportError(f"{root} has no validation images; pass another --data or none")
    ds = PTXDataset(records, size, with_mask=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=0)
    return ((x, y, m) for x, m, y in loader), len(ds)


def gate_data(cfg: ExportConfig, state: dict[str, Any], size: int, batch: int):
    """(batches, description): --data, else the recipe's dataset if it is here, else phantoms.
    Batches are (images, labels, true masks)."""
    recipe = state.get("recipe") or {}
    seed = int(recipe.get("seed", 0) or 0)
    data = cfg.data
    if data is None and recipe.get("data") and Path(recipe["data"]).is_dir():
        data = Path(recipe["data"])
    if data is not None:
        data = Path(data)
        if not data.is_dir():
            raise ExportError(f"--data {data} is not a folder; pass a dataset folder or none")
        batches, n = dataset_batches(data, size, batch, seed)
        return batches, {"source": "validation split", "data": str(data), "n_planned": n}
    n = cfg.parity_n
    return phantom_batches(n, size, batch, cfg.seed, masks=True), {
        "source": "synthetic phantoms",
        "seed": cfg.seed,
        "n_planned": n,
    }
