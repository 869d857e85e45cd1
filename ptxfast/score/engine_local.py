"""The local engine: one machine decodes in worker processes while the model runs beside them.

    ResilientLoader ─► Lanes / InFlightWindow ─► results ─► OutputWriter ─► OrderedCommitter ─► ledger
    (decode.py)        (pipeline.py)                        (writer.py)     (pipeline.py)       (ledger.py)

Decoding runs in `workers` processes, each timing its own files; the batches travel with their
metadata, are pinned and copied asynchronously on CUDA, and the model runs while the next
batches decode. On CUDA one batch is in flight: its copies, kernels and result copies are
queued before the previous batch's rows are written, so writing rows and fetching the next
batch overlap the GPU's work (transfer and compute are GPU times from CUDA events). On a CPU
the model runs in lanes, one batch per core on one thread each (compute time is summed over
the lanes), and the decoding processes, as many as a decode measured against the model's
compute calls for (`sizing`), share the cores. Rows reach the ledger in order, each
batch after its output files; a decoding worker that dies becomes an error row and decoding
goes on (`decode.ResilientLoader`).
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future

import torch

from ptxfast.score import gpu_decode, inputs, sizing, speed
from ptxfast.score.config import ScoreConfig
from ptxfast.score.decode import (
    Batch,
    CrashRows,
    Files,
    HandOver,
    LoaderSettings,
    ResilientLoader,
)
from ptxfast.score.dicom_out import model_identity
from ptxfast.score.job import Job
from ptxfast.score.ledger import read_done
from ptxfast.score.pipeline import (
    InFlight,
    InFlightWindow,
    Lanes,
    OrderedCommitter,
    Waiting,
    cores,
    default_output_workers,
    default_workers,
    launch,
    parallelism,
    results,
)
from ptxfast.score.stats import EngineStats, LoopStats, Setup, operating_point, stage_times
from ptxfast.score.writer import OutputStats, OutputWriter

__all__ = ["run"]


def run(job: Job) -> EngineStats:
    """Score the files of `job` that its ledger lacks, on this machine; what it measured."""
    config, predictor = job.config, job.predictor
    dev = predictor.device
    found, todo = inputs.todo(config, job.preds.done)
    all_threads = torch.get_num_threads()
    pooled = predictor.threads_itself  # ONNX Runtime, OpenVINO: one batch on every core
    lanes, threads = parallelism(dev, config.lanes, config.threads, pooled)
    # The decoding workers start first and fill their prefetch queues while the model warms.
    state = torch.zeros(len(found.inputs), dtype=torch.int64).share_memory_()
    make = found.files or Files  # (fetching from a DICOMweb server, or reading the folder)
    gpu = gpu_decode.resolve(config.decoder, dev)  # None: the workers decode everything
    hand_over = HandOver(gpu_decode.GPU_SYNTAXES) if gpu is not None else None
    files = make(config.root, found.inputs, predictor.size, state, config.eligibility, hand_over)
    workers, sized = _workers(config, files, todo, predictor, lanes, threads)
    settings = LoaderSettings(
        config.batch_size, workers, config.prefetch_factor, config.decode_timeout,
        pin=dev.type == "cuda",
    )  # fmt: skip
    scorer = _Scorer(job, len(todo))
    if gpu is not None:
        path_of = lambda i: config.root / found.inputs[i]  # noqa: E731
        scorer.gpu = gpu_decode.GpuFrames(gpu, dev, predictor.size, path_of, hand_over)
    # The CPUs' busy time and this process's CPU from here (decoding starts) to the loop's end.
    cpu0 = (time.perf_counter(), speed.busy_cpu_s(), time.process_time())
    loader = ResilientLoader(files, todo, settings, scorer.settle)
    if threads:
        torch.set_num_threads(threads)  # lane threads started later take this count too
    output_workers = _output_workers(config)
    loop = LoopStats(ahead=workers * config.prefetch_factor)
    loop.decoding = {"sizing": sized.as_dict() if sized is not None else None}
    from ptxfast.telemetry import GpuSampler

    # Output-writing processes start here and get ready while the model warms.
    with OutputWriter(
        config.root, found.inputs, config.masks_dir, config.seg_dir,
        model_identity(predictor), sr_dir=config.sr_dir, processes=output_workers,
    ) as writer:  # fmt: skip
        _warm(predictor, loader, min(config.batch_size, len(todo)))
        setup = _setup(job, workers, lanes, output_workers)
        loop.t_loop = time.perf_counter()
        with GpuSampler(dev) as sampler, Lanes(lanes) as pool:
            scorer.score(loader, pool, writer)
    loop.seconds = time.perf_counter() - loop.t_loop
    if dev.type == "cpu" and not output_workers:  # (their processes' CPU is not counted)
        own = time.process_time() - cpu0[2] + (scorer.decode_cpu if workers else 0.0)
        busy = speed.busy_cpu_s()
        loop.others_cpu_share = speed.others_share(
            None if busy is None else busy - cpu0[1], own, cores(), time.perf_counter() - cpu0[0]
        )
    torch.set_num_threads(all_threads)
    loop.worker_restarts = loader.restarts
    if scorer.gpu is not None:
        loop.gpu_decode = scorer.gpu.stats
    if sampler.active:
        loop.gpu = sampler.stats.as_dict()
    scorer.measured(loop)
    if config.model_only_iters > 0 and scorer.last_x is not None:
        loop.model_only = speed.model_only(
            predictor, scorer.last_x, config.batch_size, config.model_only_iters, lanes,
            threads, all_threads,
        )  # fmt: skip
        if dev.type == "cpu" and scorer.decoded:
            loop.cores = cores()
    if scorer.decoded:
        loop.decode_cpu_s_per_image = scorer.decode_cpu / scorer.decoded
        loop.decoding["by_syntax"] = sizing.by_syntax(scorer.by_syntax)
    return EngineStats(setup, loop, scorer.outputs, found, todo)


def _setup(job: Job, workers: int, lanes: int, output_workers: int) -> Setup:
    """The model and the run's parallelism, once the model is warm (threads as the lanes
    run them)."""
    predictor = job.predictor
    side = predictor.sidecar
    if side is not None:
        op, detail = operating_point(side)
    else:  # a Predictor passed in without a sidecar labels by its own rule
        op, detail = f"p > {predictor.rule.threshold:g} ({predictor.name}'s default rule)", None
    return Setup(
        model=predictor.name, artifact=str(side.path) if side is not None else None,
        backend=predictor.backend, precision=predictor.precision, device=str(predictor.device),
        workers=workers, threads=torch.get_num_threads(), lanes=lanes,
        operating_point=op, operating_point_detail=detail,
        setup_seconds=time.perf_counter() - job.t_start, output_workers=output_workers,
    )  # fmt: skip


def _workers(
    config: ScoreConfig, files: Files, todo: list[int], predictor, lanes: int, threads: int | None
) -> tuple[int, sizing.Sizing | None]:
    """Decoding processes: as asked; on a CPU sized from a measured decode against the
    model's compute (`sizing`); on a GPU every core but the scoring process's."""
    if config.workers is not None:
        return config.workers, None
    if predictor.device.type != "cpu" or not todo or cores() < 2:
        return default_workers(predictor.device), None
    sized = sizing.measure(
        files, todo, predictor, config.batch_size, lanes, threads, cores(), config.decode_timeout
    )
    if sized is None:  # a probed file killed or hung its decoder: the loader will name it
        return default_workers(predictor.device), None
    return sized.workers, sized


def _output_workers(config: ScoreConfig) -> int:
    """Processes for the run's masks, SEG and SR: as asked, else the default; 0 without any."""
    if not (config.masks_dir or config.seg_dir or config.sr_dir):
        return 0
    asked = config.output_workers
    return default_output_workers() if asked is None else asked


def _warm(predictor, loader: ResilientLoader, batch: int) -> None:
    """Warm the model while the workers decode. From here a worker that dies raises (from
    torch's SIGCHLD handler) wherever the main process is; one dying now is handed to the
    loader, which turns it into rows when the loop starts."""
    while batch > 0:
        try:
            predictor.warmup(batch, iters=3)
            return
        except RuntimeError as err:
            loader.defer(err)


class _Scorer:
    """The loop: batches from the loader through the lanes, rows into the ledger in order;
    what it measures on the way (stage times, latencies, commit marks, decode CPU time) and
    what the committed rows' output files came to."""

    def __init__(self, job: Job, total: int) -> None:
        self.job, self.total = job, total
        self.predictor = job.predictor
        self.committer = OrderedCommitter(job.preds.append, self._committed)
        self.window = InFlightWindow(0)
        self.times = stage_times()
        self.latencies: list[float] = []
        self.marks: list[tuple[float, int]] = []  # (time a batch reached the scorer, images)
        self.done = 0  # rows written this run
        self.outputs = OutputStats()  # what the output files of the rows written came to
        self.decode_cpu, self.decoded, self.unchecked = 0.0, 0, 0
        self.by_syntax: dict[str, list[float]] = {}  # transfer syntax: [files, CPU seconds]
        self.last_x: torch.Tensor | None = None  # a full batch on the device, for model-only
        self.gpu: gpu_decode.GpuFrames | None = None  # decodes frames workers hand over

    def score(self, loader: ResilientLoader, lanes: Lanes, writer: OutputWriter) -> None:
        """Every batch of `loader` through the model; rows in order after their outputs."""
        self.lanes, self.writer = lanes, writer
        # Batches in flight beyond the one being written: on CUDA one, on a CPU one per lane.
        self.window = InFlightWindow(lanes.n)
        while True:
            try:
                t_prev = time.perf_counter()
                for item in loader:
                    if isinstance(item, CrashRows):
                        self.committer.add(item.rows)
                    else:
                        self._push(item, t_prev)
                    t_prev = time.perf_counter()
                for launched in self.window.drain():
                    self._finish(launched)
                self.committer.drain()
                return
            except RuntimeError as err:  # a decoding worker died while this thread scored
                self.committer.add(loader.recover(err).rows)

    def measured(self, loop: LoopStats) -> None:
        """Put what the loop measured (stage times, latencies, commit marks) in `loop`."""
        self.times["write"] += self.committer.write_seconds
        loop.times, loop.latencies, loop.marks = self.times, self.latencies, self.marks
        loop.unchecked = self.unchecked

    def settle(self) -> set[str]:
        """After a decoding worker died: scored batches keep their rows, launched ones whose
        rows are not in the CSV are decoded and scored again; the paths the CSV holds."""
        self.window.abandon()
        self.committer.drain()
        preds = self.job.preds
        with contextlib.suppress(Exception):
            preds.file.flush()
        return read_done(preds.path)[0]

    def _push(self, batch: Batch, t_prev: float) -> None:
        t_got = time.perf_counter()
        self.times["wait"] += t_got - t_prev
        if self.gpu is not None:
            batch = self.gpu.finish(batch)  # the batch's compressed frames, decoded on the GPU
        self.times["decode"] += batch.decode_seconds
        self.decoded += len(batch.meta)
        for m in batch.meta:  # one pass: decode CPU, unchecked files, per-syntax cost
            self.decode_cpu += m.cpu_seconds
            self.unchecked += m.unchecked
            if m.syntax is not None and m.error is None:
                acc = self.by_syntax.setdefault(m.syntax, [0, 0.0])
                acc[0] += 1
                acc[1] += m.cpu_seconds
        cfg = self.job.config
        args = (batch, self.predictor, self.predictor.device, cfg.batch_size, cfg.wants_masks)
        for launched in self.window.push(self.lanes.submit(launch, *args, t_got)):
            self._finish(launched)

    def _finish(self, launched: Future) -> None:
        """Wait for a launched batch's results, make its rows and start its outputs."""
        f: InFlight = launched.result()
        scores = results(f, self.predictor, self.times)
        t_w = time.perf_counter()
        rows, outputs = self.writer.rows(f.batch, *(scores or (None, None, None, {})))
        self.times["write"] += time.perf_counter() - t_w
        if f.x is not None and (f.x.shape[0] == self.job.config.batch_size or self.last_x is None):
            self.last_x = f.x
        self.committer.add(rows, outputs, f)

    def _committed(self, waiting: Waiting, t_end: float) -> None:
        f: InFlight | None = waiting.tag
        if f is not None:  # crash rows carry no batch
            self.latencies.append(t_end - f.t_got)
            # Marked when the batch reached the scorer, not when its rows were written: a batch's
            # rows wait for the next batch (the in-flight window) and the last few are written
            # together at the end, which would count one batch more than the span produced.
            self.marks.append((f.t_got, len(f.batch.ok)))
        for o in waiting.outputs:  # written (the committer waited for them), each file's once
            self.outputs.add(o.result())
        self.done += len(waiting.rows)
        if self.job.config.progress:
            self.job.config.progress(self.done, self.total)
