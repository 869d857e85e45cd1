"""The speed figures of a scoring run's summary: the steady end-to-end rate, the model alone on
a preloaded batch (timed by `ptxfast.timing.model_only_images_per_s`, bench's own timing),
and the bound a CPU reaches when decoding shares the model's cores.

The summary compares the end-to-end throughput with the model alone on a preloaded batch of
the same size (the best of the run's lanes and one batch on every core): where decoding a file
costs a sizeable share of the model's pass over it (1024² DICOMs scored at 64² on 2 cores),
the pipeline cannot reach the model-only figure, because the cores that decode are the model's.
These are pure functions of what the engines measured; `summary.build` puts them in the summary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "SharedCoreBound", "busy_cpu_s", "model_only", "others_share", "shared_core_bound", "steady",
]  # fmt: skip


def steady(marks: list[tuple[float, int]], t0: float, ahead: int, lanes: int = 1) -> float | None:
    """Images/s after the batches decoded ahead during setup (at most half the run) are done;
    None when too few batches are left to time (lanes finish their batches close together, so
    a span of a few batches says little): at least 4 per lane, and 8. `marks` holds (time,
    images) per batch, one batch's time apart from the next (`LoopStats.marks`)."""
    if not marks:
        return None
    skip = min(ahead, len(marks) // 2)
    if len(marks) - skip < 4 * max(lanes, 2):
        return None
    start = marks[skip - 1][0] if skip else t0
    images = sum(n for _, n in marks[skip:])
    span = marks[-1][0] - start
    return images / span if images and span > 0 else None


def model_only(
    predictor,
    x: torch.Tensor,
    batch_size: int,
    iters: int,
    lanes: int,
    threads: int | None,
    all_threads: int,
) -> dict[str, float]:
    """The model alone on `x` padded to the run's batch size, in images/s, at the run's lanes x
    threads and (CPU) one batch on every core, by configuration ("2 lanes x 1 thread")."""
    from ptxfast.inference.runtime import pad_batch
    from ptxfast.score.pipeline import cores
    from ptxfast.timing import model_only_images_per_s

    x = pad_batch(x, batch_size)  # time the batch size the run used
    configs = [(lanes, threads)]
    if predictor.device.type == "cpu":
        configs.append((1, min(all_threads, cores())))  # one batch on every core
    by_config = {}
    for n, t in dict.fromkeys(configs):
        key = f"{n} lane{'s' * (n > 1)}" + (f" x {t} thread{'s' * (t > 1)}" if t else "")
        by_config[key] = model_only_images_per_s(predictor, x, iters, n, t)
    return by_config


@dataclass(frozen=True)
class SharedCoreBound:
    """What a CPU can reach when its decoders share the model's cores (the summary's fields)."""

    decode_cpu_s_per_image: float
    cores: float
    shared_core_bound_images_per_s: float | None
    bound_share: float | None  # the end-to-end rate as a share of the bound


def shared_core_bound(
    model_only: float | None, decode_cpu_s: float, cores: float, steady: float | None
) -> SharedCoreBound:
    """The bound 1 / (1/M + D/c) a CPU reaches when decoding (D CPU seconds per image) and the
    model (M images/s alone on the c cores) take turns on the same cores (c may be a share of
    them: what other processes left)."""
    bound = share = None
    if model_only:
        bound = 1.0 / (1.0 / model_only + decode_cpu_s / cores)
        if steady:
            share = steady / bound
    return SharedCoreBound(decode_cpu_s, cores, bound, share)


def busy_cpu_s() -> float | None:
    """CPU seconds the CPUs this process may run on have spent busy since boot (not idle, not
    waiting on I/O; time a hypervisor took from them counts as busy), from /proc/stat; None
    where it cannot be read (not Linux)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        wanted = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (OSError, AttributeError):
        return None
    ticks = 0
    for line in lines:
        name, *values = line.split()
        if name in wanted:
            v = [int(x) for x in values[:8]]  # user nice system idle iowait irq softirq steal
            ticks += sum(v) - v[3] - v[4]
    return ticks / os.sysconf("SC_CLK_TCK")


def others_share(busy_s: float | None, own_s: float, cores: int, seconds: float) -> float | None:
    """The share of `cores` x `seconds` that other processes took: the CPUs' busy time less
    the run's own CPU time. The shared-core bound counts every core as the run's, so on a
    machine shared with other work the run falls short of it by about this much where
    decoding sets the pace."""
    if busy_s is None or cores < 1 or seconds <= 0:
        return None
    return min(1.0, max(0.0, (busy_s - own_s) / (cores * seconds)))
