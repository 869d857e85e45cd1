"""The scoring pipeline between the loader and the ledger, in small named parts.

- `launch` / `results`: one batch's model pass. On CUDA nothing in `launch` waits for the GPU:
  the copy from pinned memory, the model and the copies of its outputs back (into pinned
  memory) are queued on the stream, and CUDA events time transfer and compute. On a CPU it
  all runs in `launch`.
- `Lanes`: where launches run. On CUDA one (the calling thread: the next batch's copies and
  kernels are queued before the previous batch's rows are written, so the host's work never
  leaves the GPU idle); on a CPU one thread per lane, one batch per core, so a lane always has
  a batch queued while the main thread writes rows and fetches the next.
- `InFlightWindow`: the launched batches, oldest first; never more than its depth outstanding
  once a push returns (back-pressure on the loader).
- `OrderedCommitter`: scored batches whose rows wait for their output files; rows reach the
  ledger in launch order, each batch once its outputs exist, and the oldest is waited for when
  too many wait (their masks are held in memory).
- `parallelism` / `default_workers`: how many lanes, threads and decoding processes.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass

import numpy as np
import torch

from ptxfast.inference.runtime import pad_batch
from ptxfast.score.decode import Batch
from ptxfast.score.writer import wait_outputs

__all__ = [
    "InFlight", "InFlightWindow", "Lanes", "OrderedCommitter", "Waiting", "cores",
    "default_workers", "launch", "parallelism", "results",
]  # fmt: skip

# Scored batches whose rows may wait for their mask outputs before the scorer waits too.
MAX_WAITING = 8


# ------------------------------------------------------------------------- one batch


class InFlight:
    """A batch whose model pass has been launched: on CUDA its copies and kernels are queued
    (CUDA events mark where transfer and compute end), on a CPU they have already run."""

    def __init__(self, batch: Batch, t_got: float) -> None:
        self.batch = batch
        self.t_got = t_got  # when the batch reached the scorer (its latency starts there)
        self.x: torch.Tensor | None = None  # the batch on the device (for the model-only timing)
        self.host: tuple | None = None  # prob, area, mask: host copies (mask None if unwanted)
        self.events: tuple | None = None  # CUDA: (start, copied, computed, fetched) events
        self.seconds = (0.0, 0.0)  # CPU: (transfer, compute)


def launch(
    batch: Batch, predictor, dev: torch.device, batch_size: int, want_masks: bool, t_got: float
) -> InFlight:
    """Start the model on `batch` (see the module docstring for what waits where)."""
    f = InFlight(batch, t_got)
    if batch.images is None:
        return f
    cuda = dev.type == "cuda"
    if cuda:
        f.events = tuple(torch.cuda.Event(enable_timing=i < 3) for i in range(4))
        f.events[0].record()
    t0 = time.perf_counter()
    x = batch.images.to(dev, non_blocking=True)
    n = x.shape[0]
    t1 = time.perf_counter()
    if cuda:
        f.events[1].record()
        x = pad_batch(x, batch_size)  # compiled GPU graphs specialise on batch shapes
    o = predictor(x)
    if cuda:
        f.events[2].record()
    # Probabilities (float32 already), areas and, when outputs are wanted, the masks (in the
    # model's precision; only positives' are used): one copy each.
    mask = o.mask[:n] if want_masks and o.mask is not None else None
    f.host = tuple(
        None if t is None else t.to("cpu", non_blocking=cuda)
        for t in (o.prob[:n], o.area[:n], mask)
    )
    if cuda:
        f.events[3].record()
    else:
        f.seconds = (t1 - t0, time.perf_counter() - t1)
    f.x = x
    return f


def results(f: InFlight, predictor, times: dict[str, float]) -> tuple | None:
    """Wait for a launched batch; (prob, area, label, masks) as numpy, None when no file of it
    decoded. Adds its transfer and compute time to `times` (GPU time on CUDA)."""
    if f.host is None:
        return None
    if f.events is not None:
        start, copied, computed, fetched = f.events
        fetched.synchronize()
        times["transfer"] += start.elapsed_time(copied) / 1000
        times["compute"] += copied.elapsed_time(computed) / 1000
    else:
        times["transfer"] += f.seconds[0]
        times["compute"] += f.seconds[1]
    prob_t, area_t, mask_t = f.host
    label, area = predictor.label(prob_t).numpy(), area_t.numpy()
    prob = predictor.reported(prob_t).numpy()
    masks: dict[int, np.ndarray] = {}
    if mask_t is not None and label.any():
        masks = {int(j): mask_t[j, 0].float().numpy() for j in np.flatnonzero(label)}
    return prob, area, label, masks


# ------------------------------------------------------------------ lanes and windows


class Lanes:
    """Runs launches: on `n` > 1 lane threads (CPU), else at once in the calling thread."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="lane") if n > 1 else None

    def submit(self, fn: Callable, *args) -> Future:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        now: Future = Future()
        now.set_result(fn(*args))
        return now

    def __enter__(self) -> Lanes:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class InFlightWindow:
    """Launched batches (futures), oldest first, at most `depth` outstanding between pushes."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._queue: deque[Future] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, launched: Future) -> Iterator[Future]:
        """Add a launched batch; yields the oldest, in launch order, while more than `depth`
        are outstanding (the caller waits for each and commits it)."""
        self._queue.append(launched)
        while len(self._queue) > self.depth:
            yield self._queue.popleft()

    def drain(self) -> Iterator[Future]:
        """Every batch still outstanding, in launch order."""
        while self._queue:
            yield self._queue.popleft()

    def abandon(self) -> None:
        """Drop every outstanding batch (a decoding worker died: the ledger says what to
        decode again): those not started are cancelled, running ones are waited for."""
        queued, self._queue = list(self._queue), deque()
        for launched in queued:
            launched.cancel()
        futures_wait(queued)


@dataclass
class Waiting:
    """A scored batch whose rows wait for its output files."""

    rows: list[list[str]]
    outputs: list[Future]
    tag: object = None  # what `on_commit` is given back (the engine's InFlight)


class OrderedCommitter:
    """Appends the rows of scored batches in the order they were added, each batch once its
    output files exist; `append(rows)` writes the ledger, `on_commit(waiting, t_end)` accounts."""

    def __init__(
        self,
        append: Callable[[list[list[str]]], None],
        on_commit: Callable[[Waiting, float], None] | None = None,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.append, self.on_commit, self.max_waiting = append, on_commit, max_waiting
        self.write_seconds = 0.0  # in `append`
        self._queue: deque[Waiting] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, rows: list[list[str]], outputs: Sequence[Future] = (), tag=None) -> None:
        """Queue a batch's rows behind its outputs, and commit what is ready; waits for the
        oldest when more than `max_waiting` batches wait."""
        self._queue.append(Waiting(rows, list(outputs), tag))
        self.commit(wait=len(self._queue) > self.max_waiting)

    def commit(self, wait: bool = False) -> None:
        """Append the rows of every leading batch whose outputs are written (waiting for the
        oldest when `wait`), in order."""
        while self._queue and (wait or all(o.done() for o in self._queue[0].outputs)):
            waiting = self._queue.popleft()
            wait_outputs(waiting.outputs)  # a destination that cannot be written stops here
            t_w = time.perf_counter()
            self.append(waiting.rows)
            t_end = time.perf_counter()
            self.write_seconds += t_end - t_w
            if self.on_commit is not None:
                self.on_commit(waiting, t_end)
            wait = False

    def drain(self) -> None:
        """Commit every batch, waiting for the outputs of each."""
        while self._queue:
            self.commit(wait=True)


# ------------------------------------------------------------------------- how many


def cores() -> int:
    """CPUs this process may run on (taskset and container limits included)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """Decoding processes a run starts when none are asked for and nothing was measured (a GPU
    run, one core; also what `ptxfast bench` assumes in its stage breakdown). A local CPU run
    sizes them from a measured decode against the model's compute instead (`sizing`)."""
    n = cores()
    if device.type == "cuda":
        # The GPU outruns decoding (an H200 ran a 512² cascade at ~650 images/s, one worker
        # decoded ~65 1024² DICOMs/s): every core but the scoring process's decodes.
        return max(1, min(16, n - 1))
    # CPU: decoding a radiograph costs a few percent of a model pass at the sizes models
    # run at, so one decoding process keeps the model fed (see parallelism).
    return 1 if n > 1 else 0


def default_output_workers() -> int:
    """Processes a local run writes masks, SEG and SR with when none are asked for: one per
    core, at most 8. A positive's PNGs, SEG and SR cost ~0.2 s of CPU (PNG encoding and
    pure-Python pydicom/highdicom, which hold the GIL), tens of model passes, so with outputs
    asked for they set the pace; on two cores two processes scored 1.6× the images/s of two
    threads (`bench/output_bench.py`, `bench/results/cpu-2core.md`)."""
    return max(1, min(8, cores()))


def parallelism(
    device: torch.device, lanes: int | None, threads: int | None, pooled: bool = False
) -> tuple[int, int | None]:
    """(lanes, torch threads per lane) for the model; threads None leaves torch's (GPU).

    On a CPU the default is one lane per core with one thread each: batches run side by side
    instead of one batch on every core. Small convolutions split over OpenMP threads wait on
    each other at every barrier, and a decoding worker that preempts one thread stalls the
    rest; a lane on its own thread loses only the time the decoder takes. On 2 cores at 64²,
    2 lanes x 1 thread ran the eb3un+eb3 artifact at 181-186 images/s against 120-150 for
    1 lane x 2 threads (and ~92 for one thread). Given one of the two, the other fills the
    cores.

    `pooled`: the backend runs its own thread pool over the cores (ONNX Runtime, OpenVINO;
    torch's thread count does not reach it), so by default one lane feeds it: side by side,
    calls only contend for that pool (ONNX Runtime, eb3un+eb3 at 128² on 2 cores: 22 images/s
    in 2 lanes against 26-30 in one) or queue for the same infer requests (OpenVINO: the same
    rate either way).
    """
    if device.type != "cpu":
        return 1, None
    n = cores()
    if lanes is None and threads is None:
        return (1, n) if pooled else (n, 1)
    if lanes is None:
        return max(1, n // threads), threads
    return lanes, threads or max(1, n // lanes)
