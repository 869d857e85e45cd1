"""The speed figures of a scoring run's summary: the steady end-to-end rate, the model alone on
a preloaded batch (timed by `ptxfast.timing.model_only_images_per_s`, bench's own timing),
and the bound a CPU reaches when decoding shares the model's cores.

The summary compares the end-to-end throughput with the model alone on a preloaded batch of
the same size (the best of the run's lanes and one batch on every core): where decoding a file
costs a sizeable share of the model's pass over it (1024² DICOMs scored at 64² on 2 cores),
the pipeline cannot reach the model-only figure, because the cores that decode are the model's.
"""

from __future__ import annotations

import torch

from ptxfast.inference.runtime import pad_batch
from ptxfast.score.pipeline import cores
from ptxfast.score.summary import ScoreSummary
from ptxfast.timing import model_only_images_per_s

__all__ = ["fill_model_only", "fill_rates", "shared_core_bound", "steady"]


def steady(marks: list[tuple[float, int]], t0: float, ahead: int, lanes: int = 1) -> float | None:
    """Images/s after the batches decoded ahead during setup (at most half the run) are done;
    None when too few batches are left to time (lanes finish their batches close together, so
    a span of a few batches says little): at least 4 per lane, and 8. `marks` holds (time a
    batch's rows were written, images in it)."""
    if not marks:
        return None
    skip = min(ahead, len(marks) // 2)
    if len(marks) - skip < 4 * max(lanes, 2):
        return None
    start = marks[skip - 1][0] if skip else t0
    images = sum(n for _, n in marks[skip:])
    span = marks[-1][0] - start
    return images / span if images and span > 0 else None


def fill_model_only(
    summary: ScoreSummary,
    predictor,
    x: torch.Tensor,
    iters: int,
    lanes: int,
    threads: int | None,
    all_threads: int,
) -> None:
    """Time the model alone on `x` padded to the run's batch size, at the run's lanes x threads
    and (CPU) one batch on every core, keep the best, and the ratio of the steady rate to it."""
    x = pad_batch(x, summary.batch_size)  # time the batch size the run used
    configs = [(lanes, threads)]
    if predictor.device.type == "cpu":
        configs.append((1, min(all_threads, cores())))  # one batch on every core
    for n, t in dict.fromkeys(configs):
        ips = model_only_images_per_s(predictor, x, iters, n, t)
        key = f"{n} lane{'s' * (n > 1)}" + (f" x {t} thread{'s' * (t > 1)}" if t else "")
        summary.model_only_by_config[key] = ips
        if ips > (summary.model_only_images_per_s or 0.0):
            summary.model_only_images_per_s, summary.model_only_config = ips, key
    set_ratio(summary)


def set_ratio(summary: ScoreSummary) -> None:
    """The end-to-end rate (steady, else overall) over the model-only one: how much of the
    model's speed the run kept. Left as it is until both are known."""
    rate = summary.steady_images_per_s or summary.images_per_s
    if rate and summary.model_only_images_per_s:
        summary.ratio = rate / summary.model_only_images_per_s


def shared_core_bound(
    summary: ScoreSummary, decode_cpu_s: float, cores: int, steady: float | None
) -> None:
    """Fill the bound 1 / (1/M + D/c) a CPU reaches when decoding (D CPU seconds per image)
    and the model (M images/s alone on the c cores) take turns on the same cores."""
    m = summary.model_only_images_per_s
    summary.decode_cpu_s_per_image, summary.cores = decode_cpu_s, cores
    if m:
        summary.shared_core_bound_images_per_s = 1.0 / (1.0 / m + decode_cpu_s / cores)
        if steady:
            summary.bound_share = steady / summary.shared_core_bound_images_per_s


def fill_rates(
    summary: ScoreSummary, marks: list[tuple[float, int]], t_loop: float, loop: float, ahead: int,
    lanes: int,
) -> None:  # fmt: skip
    """The loop's time, its batches, images/s over the loop and once the pipeline is full
    (`ahead`: batches decoded before the loop started); needs `summary.scored` counted."""
    summary.loop_seconds = loop
    summary.batches = len(marks)
    if summary.scored and loop > 0:
        summary.images_per_s = summary.scored / loop
    summary.steady_images_per_s = steady(marks, t_loop, ahead, lanes)
