"""Timing a model: warm-up, device-synchronised `perf_counter` calls, and the figures they give.

One source for how ptxfast times inference, shared by `ptxfast bench` and the scorer's
model-only images/s (a module of its own, so neither package imports the other for it):
- `timed_calls`: call a function repeatedly, each call between two device synchronisations,
  optionally stopping at a deadline; `warm_up` makes the untimed first calls.
- `time_predictor`: a predictor on pre-made device inputs, warm-up then repeats (bench rows).
- `model_only_images_per_s`: a predictor alone on one preloaded batch, in one or more lanes
  (the scorer's model-only figure).
- `percentiles` / `latency_ms`: the one set of latency percentiles (p50/p90/p95/p99) every
  report gives; `summarize_times`: throughput and latency of timed batches.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ptxfast.environment import sync

__all__ = [
    "INPUT_BUFFERS",
    "LATENCY_PERCENTILES",
    "input_buffers",
    "latency_ms",
    "model_only_images_per_s",
    "percentiles",
    "summarize_times",
    "time_predictor",
    "timed_calls",
    "warm_up",
]

LATENCY_PERCENTILES = (50, 90, 95, 99)  # the one set every latency report gives
INPUT_BUFFERS = 4  # distinct pre-made inputs the timed loop rotates through


def percentiles(
    values: Sequence[float], qs: Sequence[int] = LATENCY_PERCENTILES
) -> dict[str, float]:
    """{"p50": ..., "p90": ..., "p95": ..., "p99": ...} of `values` (linear interpolation
    between samples, numpy's default)."""
    if len(values) == 0:
        raise ValueError("percentiles of no values")
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs}


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """`percentiles` of latencies given in seconds, in milliseconds; None each when empty."""
    if len(seconds) == 0:
        return dict.fromkeys((f"p{q}" for q in LATENCY_PERCENTILES), None)
    return percentiles([t * 1000.0 for t in seconds])


def summarize_times(times: Sequence[Sequence[float]], batch: int) -> dict[str, float | int]:
    """Throughput and latency figures of timed batches: `times[r][i]` is the seconds of call i of
    repeat r, each call scoring `batch` images.

    images_per_s: all images / all timed seconds; _std/_min/_max: over the repeats' own
    throughputs (std 0 for one repeat). latency_ms_*: per batch; image_ms_*: per image (the batch
    latency divided by the batch size).
    """
    if batch < 1 or not times or any(len(r) == 0 for r in times):
        raise ValueError("summarize_times needs batch >= 1 and at least one call per repeat")
    flat = [t for rep in times for t in rep]
    per_repeat = [batch * len(rep) / sum(rep) for rep in times]
    lat = percentiles([t * 1000.0 for t in flat])
    return {
        "samples": len(flat),
        "images_per_s": batch * len(flat) / sum(flat),
        "images_per_s_std": statistics.stdev(per_repeat) if len(per_repeat) > 1 else 0.0,
        "images_per_s_min": min(per_repeat),
        "images_per_s_max": max(per_repeat),
        "latency_ms_p50": lat["p50"],
        "latency_ms_p90": lat["p90"],
        "latency_ms_p99": lat["p99"],
        "latency_ms_mean": 1000.0 * statistics.fmean(flat),
        "image_ms_p50": lat["p50"] / batch,
        "image_ms_p90": lat["p90"] / batch,
        "image_ms_p99": lat["p99"] / batch,
    }


def timed_calls(
    call: Callable[[], Any], device: torch.device, n: int, deadline: float | None = None
) -> list[float]:
    """Seconds of each of `n` calls of `call`, each between two synchronisations of `device`.

    With a `deadline` (a `time.perf_counter()` value), no call starts after it but the first,
    so a slow model still gives one timing.
    """
    seconds: list[float] = []
    for _ in range(n):
        if seconds and deadline is not None and time.perf_counter() >= deadline:
            break
        sync(device)
        t0 = time.perf_counter()
        call()
        sync(device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def warm_up(call: Callable[[], Any], device: torch.device, n: int) -> float:
    """Make `n` (at least one) untimed calls; the seconds of the first, which includes
    compilation and autotuning where a backend does them on first use."""
    (first,) = timed_calls(call, device, 1)
    for _ in range(1, n):
        call()
    sync(device)
    return first


def input_buffers(predictor, batch: int, seed: int) -> list[torch.Tensor]:
    """Inputs already on the device, in the predictor's dtype and layout: the timed loop then
    measures the model, not the copy (the stage breakdown times the copy)."""
    g = torch.Generator().manual_seed(seed * 1009 + batch)
    s = predictor.size
    fmt = torch.channels_last if predictor.channels_last else torch.contiguous_format
    return [
        torch.rand(batch, 1, s, s, generator=g)
        .to(predictor.device, predictor.input_dtype)
        .contiguous(memory_format=fmt)
        for _ in range(INPUT_BUFFERS)
    ]


def time_predictor(
    predictor, batch: int, *, warmup: int, iters: int, repeats: int, seed: int = 0, sampler=None
) -> tuple[list[list[float]], float]:
    """Time `predictor` on batches of `batch`: (seconds per call per repeat, first call seconds).

    The first call (compilation and autotuning included) and `warmup - 1` more are untimed;
    then `repeats` × `iters` calls, each between two device synchronisations, rotating among
    pre-made inputs. `sampler` (a context manager, e.g. a GpuSampler) wraps the timed calls only.
    """
    dev = predictor.device
    xs = input_buffers(predictor, batch, seed)
    inputs = itertools.cycle(xs)
    first = warm_up(lambda: predictor(next(inputs)), dev, warmup)
    inputs = itertools.cycle(xs)  # the timed calls start again from the first buffer
    with sampler if sampler is not None else contextlib.nullcontext():
        times = [timed_calls(lambda: predictor(next(inputs)), dev, iters) for _ in range(repeats)]
    return times, first


def model_only_images_per_s(
    predictor,
    x: torch.Tensor,
    iters: int,
    lanes: int = 1,
    threads: int | None = None,
    budget_s: float = 5.0,
) -> float:
    """Images/s of the predictor alone on a preloaded batch (device-synchronised): `lanes`
    threads each scoring `iters` timed batches after a warm one (fewer, at least one, when
    they take over `budget_s`), with `threads` torch threads each (None: leave torch's)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        x = x.to(predictor.device)
        warm_up(lambda: predictor(x), predictor.device, 1)  # a partial batch may be a new shape
        t0 = time.perf_counter()

        def lane() -> int:
            return len(timed_calls(lambda: predictor(x), predictor.device, iters, t0 + budget_s))

        if lanes == 1:
            done = lane()
        else:
            # New threads take torch's thread count as set above.
            with ThreadPoolExecutor(lanes) as pool:
                done = sum(pool.map(lambda _: lane(), range(lanes)))
        return done * x.shape[0] / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
