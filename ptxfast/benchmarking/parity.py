"""Parity against eager fp32: the labelled set it is measured on (a dataset's test split, or
synthetic phantoms in memory), the eager fp32 reference, and one PARITY_KEYS row per variant.
The figures themselves are `ptxfast.metrics.parity`'s, the one parity measure of ptxfast."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptxfast.benchmarking.config import PARITY_BATCH, BenchConfig, BenchError
from ptxfast.benchmarking.results import PARITY_KEYS, first_line, keyed

__all__ = [
    "ParitySet",
    "Reference",
    "eager_reference",
    "labelled_set",
    "agreement_row",
    "probabilities",
]


@dataclass
class ParitySet:
    """The labelled images parity is measured on, in batches, and what they are."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]  # (images, labels) of PARITY_BATCH
    info: dict[str, Any]  # the report's "data": source, n, n_pos, ...
    paths: list[Path] = field(default_factory=list)  # the dataset's files, for the stages

    @property
    def labels(self) -> np.ndarray | None:
        """The ground-truth labels of every batch, in order (None without a set)."""
        return np.concatenate([y.numpy() for _, y in self.batches]) if self.batches else None


@dataclass
class Reference:
    """Eager fp32, the model every variant is compared with, and its probabilities."""

    predictor: Any
    probs: np.ndarray
    build_s: float


def labelled_set(cfg: BenchConfig, src, n: int, say: Callable[[str], None]) -> ParitySet:
    """`n` images of `cfg.data`'s (else the model's training data's) test split, or without a
    dataset `n` synthetic phantoms, at the model's size."""
    from ptxfast.data.datasets import DatasetError, PTXDataset, ensure_splits
    from ptxfast.export import phantom_batches

    data = Path(cfg.data) if cfg.data is not None else src.trained_on
    if data is None:
        batches = list(phantom_batches(n, src.size, PARITY_BATCH, seed=cfg.seed)) if n > 0 else []
        n_pos = int(sum(float(y.sum()) for _, y in batches))
        info = {"source": "synthetic phantoms", "n": n, "n_pos": n_pos, "seed": cfg.seed}
        return ParitySet(batches, info)
    if not data.is_dir():
        raise BenchError(f"--data {data} is not a folder; give a dataset folder")
    try:
        records = ensure_splits(data, seed=cfg.seed)["test"]
    except (DatasetError, OSError) as err:
        raise BenchError(f"cannot read the test split of {data}: {err}") from None
    if not records:
        raise BenchError(f"{data} has an empty test split; pass another --data")
    chosen = records[:n] if n > 0 else []
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    if chosen:
        loader = torch.utils.data.DataLoader(
            PTXDataset(chosen, src.size, with_mask=False), batch_size=PARITY_BATCH
        )
        batches = [(x, y) for x, _, y in loader]
        say(f"parity on {len(chosen)} images of the test split of {data}")
    info = {
        "source": "test split",
        "data": str(data),
        "n": len(chosen),
        "n_pos": int(sum(r.label for r in chosen)),
        "test_split_size": len(records),
    }
    return ParitySet(batches, info, [r.path for r in records])


def probabilities(predictor, batches) -> np.ndarray:
    """The predictor's image probabilities on `batches` ((images, labels) pairs), in order, as
    float32, with TF32 off (parity compares precisions, not the default math mode)."""
    from ptxfast.export import strict_fp32

    with strict_fp32():
        return np.concatenate([predictor(x).prob.float().cpu().numpy() for x, _ in batches])


def eager_reference(src, device: torch.device, batches, seed: int) -> Reference:
    """Eager fp32 of the source model on `device`, with its probabilities on `batches`."""
    from ptxfast.inference.runtime import build_predictor

    t0 = time.perf_counter()
    reference = build_predictor(
        "eager", src.model, name=src.name, size=src.size, device=device, seed=seed
    )
    build_s = time.perf_counter() - t0
    return Reference(reference, probabilities(reference, batches), build_s)


def agreement_row(
    predictor, batches, labels, ref_probs, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A PARITY_KEYS row: `metrics.parity` of `predictor`'s probabilities on `batches` against
    the eager fp32 ones (`ref_probs`), with `labels` the ground truth; errors become the row's."""
    from ptxfast.metrics import parity

    base = base or {}
    if ref_probs is None:
        return keyed(PARITY_KEYS, **base, status="skipped", error="no eager fp32 reference")
    try:
        probs = probabilities(predictor, batches)
        threshold = float(predictor.thresholds["label"])
        fig = parity(ref_probs, probs, labels, threshold=threshold)
        return keyed(PARITY_KEYS, **base, **fig, status="ok", threshold=threshold)
    except Exception as err:
        return keyed(PARITY_KEYS, **base, status="failed", error=first_line(err))
