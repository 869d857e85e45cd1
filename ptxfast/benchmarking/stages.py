"""The stages of scoring, timed apart: decoding real files, the pinned host→device copy, the
model, the device→host copy, as ms per image and the images/s each stage alone allows, so the
user sees what bounds end-to-end speed."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptxfast.benchmarking.results import STAGE_KEYS, first_line, keyed
from ptxfast.environment import sync

__all__ = ["StageInputs", "measure_stages", "stage_figures", "stage_inputs", "stage_row"]


@dataclass
class StageInputs:
    """Files decoded once for the stage breakdown, the same for every variant."""

    images: torch.Tensor | None  # N×1×S×S, None when no file decoded
    decode_s_per_image: float  # in one process
    decode_errors: int
    decode_workers: int  # the processes the scorer decodes with on this device
    what: str  # which files, for the report


def stage_inputs(
    paths: Sequence[Path],
    dataset: str | None,
    n: int,
    size: int,
    *,
    seed: int,
    workers: int,
    say: Callable[[str], None],
) -> StageInputs:
    """The first `n` of `paths` (files of the parity set's `dataset`) decoded at `size`; without
    any, `n` synthetic 1024² DICOMs written to a temporary folder first."""
    with tempfile.TemporaryDirectory(prefix="ptxfast-bench-") as tmp:
        paths = list(paths[:n])
        what = f"{len(paths)} files of {dataset}"
        if not paths:
            say(f"writing {n} synthetic 1024² DICOMs for the stage breakdown")
            paths = _phantom_files(n, seed, Path(tmp) / "phantoms")
            what = f"{len(paths)} synthetic 1024² DICOMs (mixed transfer syntaxes)"
        images, decode_s, errors = _decode(paths, size)
    return StageInputs(images, decode_s, errors, workers, what)


def _phantom_files(n: int, seed: int, folder: Path) -> list[Path]:
    """`n` synthetic 1024² DICOMs (the CANDID-PTX layout, mixed transfer syntaxes) in `folder`."""
    from ptxfast.data.synth import write_dataset

    # Up to 24 images are written in this process (worker start-up would cost more).
    workers = 1 if n <= 24 else min(8, os.cpu_count() or 1)
    write_dataset(folder, n, seed, size=1024, workers=workers)
    return sorted((folder / "images").glob("*.dcm"))


def _decode(paths: Sequence[Path], size: int) -> tuple[torch.Tensor | None, float, int]:
    """(decoded images N×1×S×S, seconds per decoded image in one process, failures)."""
    import warnings

    from ptxfast.data.dicom import load_image

    images, errors, seconds = [], 0, 0.0
    for path in paths:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img, _ = load_image(path, size)
        except Exception:  # a file the scorer would give an error row: not a decode timing
            errors += 1
            continue
        seconds += time.perf_counter() - t0
        images.append(img)
    if not images:
        return None, 0.0, errors
    return torch.from_numpy(np.stack(images))[:, None], seconds / len(images), errors


def stage_figures(ms_per_image: dict[str, float | None], decode_workers: int) -> dict[str, Any]:
    """Implied images/s of each stage alone, the serial rate, and the stage that bounds a fully
    overlapped pipeline. `ms_per_image` has decode (one process), h2d, compute, d2h; None where a
    stage does not exist (the copies on a CPU)."""
    out: dict[str, Any] = {}
    rates: dict[str, float] = {}
    for stage in ("decode", "h2d", "compute", "d2h"):
        ms = ms_per_image.get(stage)
        rate = None
        if ms is not None and ms > 0:
            rate = 1000.0 / ms * (decode_workers if stage == "decode" else 1)
            rates[stage] = rate
        out[f"{stage}_ms_per_image"] = ms
        out[f"{stage}_images_per_s"] = rate
    total = sum(v for v in ms_per_image.values() if v is not None)
    out["serial_images_per_s"] = 1000.0 / total if total > 0 else None
    out["bound"] = min(rates, key=rates.__getitem__) if rates else None
    out["bound_images_per_s"] = min(rates.values()) if rates else None
    return out


def measure_stages(
    predictor, images: torch.Tensor, batch: int, decode_s_per_image: float, decode_workers: int
) -> dict[str, Any]:
    """ms per image of the host→device copy (from pinned memory), the model and the
    device→host copy of its outputs for full batches of `batch` made from `images`, with the
    decode time measured before, and what each stage alone allows."""
    dev = predictor.device
    n = images.shape[0]
    cuda = dev.type == "cuda"
    # Full batches only (the shape the timing warmed; a new one would recompile some backends);
    # on a GPU at least two, where they cost little.
    pool = images.repeat(math.ceil(max(n, (2 if cuda else 1) * batch) / n), 1, 1, 1)
    chunks = [pool[i : i + batch] for i in range(0, pool.shape[0] - batch + 1, batch)]
    if cuda:  # pinned as the scorer's DataLoader pins them, off the timed path
        chunks = [c.pin_memory() for c in chunks]
        predictor(chunks[0].to(dev))  # the first copy from a new pinned buffer is slower
        sync(dev)
    h2d = compute = d2h = 0.0
    for chunk in chunks:
        t0 = time.perf_counter()
        x = chunk.to(dev, non_blocking=True)
        sync(dev)
        t1 = time.perf_counter()
        out = predictor(x)
        sync(dev)
        t2 = time.perf_counter()
        for t in out:
            if t is not None:
                t.cpu()
        t3 = time.perf_counter()
        h2d, compute, d2h = h2d + t1 - t0, compute + t2 - t1, d2h + t3 - t2
    images_timed = batch * len(chunks)
    ms = {
        "decode": 1000.0 * decode_s_per_image if decode_s_per_image > 0 else None,
        "h2d": 1000.0 * h2d / images_timed if cuda else None,  # no copy on a CPU
        "compute": 1000.0 * compute / images_timed,
        "d2h": 1000.0 * d2h / images_timed if cuda else None,
    }
    return {"batch": batch, **stage_figures(ms, decode_workers)}


def stage_row(predictor, inputs: StageInputs, batch: int, variant: str) -> dict[str, Any]:
    """A STAGE_KEYS row of `predictor` at `batch` on `inputs`; an error becomes the row's."""
    try:
        stage = measure_stages(
            predictor, inputs.images, batch, inputs.decode_s_per_image, inputs.decode_workers
        )
    except Exception as err:
        return keyed(STAGE_KEYS, variant=variant, status="failed", error=first_line(err))
    return keyed(
        STAGE_KEYS, **stage, variant=variant, status="ok", files=int(inputs.images.shape[0]),
        decode_errors=inputs.decode_errors, decode_workers=inputs.decode_workers,
    )  # fmt: skip
