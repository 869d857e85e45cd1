"""How many decoding processes a CPU run starts, from what it measures before starting them.

Decoding and the model share a CPU's cores. A 2500x2048 JPEG-lossless radiograph costs ~30-160
ms of CPU to decode while a small artifact needs 3 ms of compute per image, so one decoder on
two cores starves the model (`ptxfast score` ran at 51% of its shared-core bound that way); a
1024² uncompressed file costs ~5 ms against a 512² model's ~100, so more decoders would only take
cores from the model. `measure` decodes a few of the run's files in a child process (CPU time per
file, D) and times the loaded model alone on the run's lanes (C = cores / images per second, its
CPU seconds per image), and `decoders` gives decoding the share of the cores it needs in the
shared-core bound, D / (D + C). The model runs one thread per core, and while everything is
runnable the scheduler gives each thread and process an equal share, so n decoders get
n / (n + cores) of the cores: they need n >= cores x D / C, rounded up, between 1 and the cores
(ceil(cores x D / (D + C)) decoders got too little: at 256² one decoder took 0.55 of the 0.72
cores it needed, and the run reached 86-88% of its bound). Decoders that get ahead block on
the full queue and hand their share back. When decoding dominates, every core decodes.

`by_syntax` and `decoders_to_keep_busy` are what the summary reports afterwards: decoding
files/s per core by transfer syntax, and the decoders that would keep the loaded model busy.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ptxfast.score.decode import Files, worker_init
from ptxfast.score.processes import clean_fork, start_method
from ptxfast.timing import model_only_images_per_s

__all__ = ["PROBE_FILES", "Sizing", "by_syntax", "decoders", "decoders_to_keep_busy", "measure"]

PROBE_FILES = 3  # files decoded (in a child process) to measure D (the median is taken)


@dataclass(frozen=True)
class Sizing:
    """What the sizing measured and chose."""

    decode_cpu_s: float  # D: CPU seconds to decode one file (median of the probe)
    compute_cpu_s: float  # C: CPU seconds of model compute per image (cores / images per s)
    cores: int
    workers: int

    def as_dict(self) -> dict[str, float | int]:
        return dict(
            decode_ms=1000 * self.decode_cpu_s, compute_ms=1000 * self.compute_cpu_s,
            cores=self.cores, workers=self.workers,
        )  # fmt: skip


def decoders(decode_cpu_s: float, compute_cpu_s: float, cores: int) -> int:
    """Decoding processes beside the model's `cores` threads when decoding a file costs
    `decode_cpu_s` and the model `compute_cpu_s` per image: ceil(cores x D / C), 1 to `cores`
    (see the module docstring). That is `decoders_to_keep_busy` at the model-only rate
    cores / C, capped at the cores."""
    if cores <= 1 or decode_cpu_s <= 0:
        return 1
    if compute_cpu_s <= 0:
        return cores
    return max(1, min(cores, decoders_to_keep_busy(cores / compute_cpu_s, decode_cpu_s)))


def measure(
    files: Files,
    todo: Sequence[int],
    predictor,
    batch_size: int,
    lanes: int,
    threads: int | None,
    cores: int,
    timeout: float,
) -> Sizing | None:
    """Decode up to `PROBE_FILES` of `todo` (their CPU time) and time the model alone on the
    run's lanes x threads, then size the decoders (see the module docstring); None when the
    probe's process died or ran past `timeout` seconds (the caller keeps its default)."""
    probe = _probe(files, list(todo[:PROBE_FILES]), timeout)
    if probe is None:
        return None
    d = statistics.median(probe) if probe else 0.0
    x = torch.rand(batch_size, 1, predictor.size, predictor.size)
    rate = model_only_images_per_s(predictor, x, 2, lanes, threads, budget_s=2.0)
    c = cores / rate if rate > 0 else 0.0
    return Sizing(d, c, cores, decoders(d, c, cores))


def _probe(files: Files, indices: list[int], timeout: float) -> list[float] | None:
    """CPU seconds to decode each file of `indices`, in a process of its own like the decoding
    workers: a file that kills or hangs its decoder must not take the scoring process with it
    (the loader turns it into an error row later). None when that process died or timed out."""
    ctx = multiprocessing.get_context(start_method())
    recv, send = ctx.Pipe(duplex=False)
    with clean_fork():
        proc = ctx.Process(target=_probe_in_child, args=(files, indices, send), daemon=True)
        proc.start()
    send.close()
    try:
        return recv.recv() if recv.poll(timeout) else None
    except EOFError:  # it died before answering
        return None
    finally:
        proc.kill()
        proc.join()
        recv.close()


def _probe_in_child(files: Files, indices: list[int], send) -> None:
    worker_init(0)  # a decoding worker's setup: dies with the scorer, one thread
    send.send([files[i][1].cpu_seconds for i in indices])


def by_syntax(seconds: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """{syntax: [files, CPU seconds]} as {syntax: files, files/s per core} for the summary."""
    return {
        name: {"files": int(n), "files_per_s_per_core": n / s if s > 0 else float("nan")}
        for name, (n, s) in sorted(seconds.items())
    }


def decoders_to_keep_busy(model_images_per_s: float | None, decode_cpu_s: float) -> int | None:
    """Decoding processes (one core each) that would feed the loaded model at its model-only
    rate: rate x D, rounded up."""
    if not model_images_per_s or decode_cpu_s <= 0:
        return None
    return math.ceil(model_images_per_s * decode_cpu_s - 1e-9)  # 18.000000000000004 is 18
