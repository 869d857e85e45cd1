"""`ptxfast score --engine ray`: the same scoring run spread over a Ray cluster with Ray Data.

The local engine decodes in a few processes of one machine and runs the model beside them; on a
cluster the two scale apart:

    sorted inputs (after --resume and --shard, as local)
      → ray.data.from_items                      one record per file: index, path
      → map_batches(Decoder, concurrency=D)      CPU actors: ptxfast's reader at the model's size
      → map_batches(Scorer, concurrency=A)       one per GPU (num_gpus=1), or CPU lanes: the
                                                 artifact loaded once (sha256 checked); masks and
                                                 SEGs written to the shared folder; CSV rows out
      → iter_batches on the driver               deduplicated by path, appended to the ledger

Everything a row holds is made by the local engine's own pieces: `decode.Files` decodes a
file (a failure is its error, never an exception), `decode.collate`, `pipeline.launch` and
`pipeline.results` run the model, `writer.OutputWriter` makes the rows and writes the outputs,
and the driver appends through the same `ledger.PredsCsv` (same columns, one fsync'd write per
batch, the same resume and lock), so a run started on one engine can be resumed on the other.
The two stages' actors are in `ray_stages`; this module plans them, runs them and drains
their rows into the ledger.

Faults. Both actor pools run with explicit Ray retry settings (`_RESTARTS` restarts per actor,
`_TASK_RETRIES` retries per batch): a decoder or model actor that dies is restarted and its
batch scored again. A batch can then reach the driver twice; the driver keeps the first row of
each path, so the CSV never holds two. A decoder actor decodes in a forked child process: a file
that kills the process decoding it (a codec's segfault, the OOM killer) kills the child, not
the actor; the batch is decoded again file by file, each in a fresh child, and a file that
kills `ray_stages._DECODE_ATTEMPTS` children in a row gets an error row, so one bad file never
fails a block or the job. The driver killed outright loses only rows not yet fsync'd; `--resume`
scores the rest.

Resources. The model artifact, the inputs and the --masks/--dicom-seg/--dicom-sr folders must
be on a filesystem every node sees at the same path; the CSV is written by the driver alone. With GPUs
in the cluster (and an artifact exported for CUDA, or --device cuda) there is one model actor
per GPU and the other CPUs decode; without, every CPU is a model lane (one torch thread each,
as the local engine's lanes) and `decoders` share the cores (a radiograph costs a few percent
of a model pass to decode at the sizes CPUs run).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptxfast.inference.spec import ArtifactSpec
from ptxfast.score import inputs, ledger
from ptxfast.score.config import ScoreError
from ptxfast.score.job import Job
from ptxfast.score.ledger import CSV_COLUMNS
from ptxfast.score.ray_stages import Decoder, Scorer, written_of
from ptxfast.score.stats import EngineStats, LoopStats, Setup, operating_point
from ptxfast.score.writer import OutputStats

INSTALL_HINT = "pip install 'ptxfast[ray]'"
_RESTARTS = 3  # times Ray restarts a dead decoder or model actor
_TASK_RETRIES = 3  # times Ray runs a batch again on a restarted actor
_DECODER_CPUS_WITH_GPUS = 1.0  # a decoder's CPU share when GPUs run the model
_LANE_CPUS = 1.0  # a CPU model lane: one core, one torch thread
# On CPU-only clusters decoders take no CPU from the scheduler: they run on the lanes' cores,
# as the local engine's decoding worker does.
_DECODER_CPUS_ON_CPU = 0.0


@dataclass
class RayOptions:
    """How `--engine ray` uses the cluster; None fields take the defaults described above."""

    address: str | None = None  # "auto", "ray://host:10001", or None: Ray's default
    decoders: int | None = None  # decoder actors
    actors: int | None = None  # model actors


def require_ray():
    """The ray module, or a one-line ScoreError saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ScoreError(
            f"--engine ray needs Ray Data, which is not installed; {INSTALL_HINT}"
        ) from None
    return ray


def check_options(options: RayOptions) -> None:
    """Refuse bad counts before anything starts."""
    for value, option in ((options.decoders, "--decoders"), (options.actors, "--actors")):
        if value is not None and value < 1:
            raise ScoreError(f"{option} must be at least 1")


# ---------------------------------------------------------------------------------- run


@dataclass
class _Plan:
    """Where the stages run: counts and per-actor resources."""

    device: str  # "cuda" or "cpu" in the model actors
    actors: int
    decoders: int
    actor_resources: dict[str, float]
    decoder_cpus: float
    threads: int | None  # torch threads per CPU model actor


def _plan(
    resources: dict[str, float], device: str, sidecar: ArtifactSpec, options: RayOptions, threads
):
    cpus = int(resources.get("CPU", 0))
    gpus = int(resources.get("GPU", 0))
    if device == "auto":
        device = "cuda" if gpus and sidecar.device.startswith("cuda") else "cpu"
    elif device.startswith("cuda"):
        if not gpus:
            raise ScoreError(
                "--device cuda with --engine ray: the cluster has no GPUs; start the nodes with "
                "GPUs (ray start ... --num-gpus N) or score with --device cpu"
            )
        device = "cuda"
    elif device != "cpu":
        raise ScoreError(f"--device {device!r} with --engine ray: give auto, cuda or cpu")
    if device == "cuda":
        actors = options.actors or gpus
        decoders = options.decoders or max(1, cpus - actors)
        return _Plan(
            device, actors, decoders, {"num_gpus": 1.0, "num_cpus": 1.0},
            _DECODER_CPUS_WITH_GPUS, None,
        )  # fmt: skip
    actors = options.actors or max(1, cpus)
    decoders = options.decoders or max(1, cpus // 8)
    lane_cpus = min(_LANE_CPUS, cpus / actors) if cpus else _LANE_CPUS
    return _Plan(
        "cpu", actors, decoders, {"num_cpus": lane_cpus}, _DECODER_CPUS_ON_CPU, threads or 1
    )


def _connect(ray, address: str | None) -> bool:
    """Join (or start) a cluster; True when this call started it and must shut it down."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # A cluster of this run alone: no dashboard, and workers at the driver's priority
        # (Ray starts them at nice 15, which on a machine shared with other work starves the
        # decoders and model lanes that are the whole job).
        kw["include_dashboard"] = False
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        ray.init(address=address, **kw)
    except Exception as err:  # ConnectionError, ValueError: an address nobody answers
        text = " ".join(str(err).split())[:300]
        raise ScoreError(
            f"cannot reach a Ray cluster at {address or 'the default address'} ({text}); "
            "start one with `ray start --head` or check --address"
        ) from None
    return True


def run(job: Job, sidecar: ArtifactSpec, options: RayOptions, device: str = "auto") -> EngineStats:
    """Score `job` on Ray; `job.preds` is open (and locked), the artifact's bytes checked."""
    ray = require_ray()
    started = _connect(ray, options.address)
    try:
        found, todo = inputs.todo(job.config, job.preds.done)
        resources = ray.cluster_resources()
        plan = _plan(resources, device, sidecar, options, job.config.threads)
        setup = _setup(job, sidecar, plan)
        cluster = _cluster(ray, plan, resources)
        tally = _Tally(LoopStats(t_loop=time.perf_counter(), ahead=2 * plan.actors))
        if todo:
            ds = _dataset(ray, job, sidecar, plan, [(i, found.inputs[i]) for i in todo])
            _drain(ray, ds, job, tally, len(todo))
        tally.loop.seconds = time.perf_counter() - tally.loop.t_loop
    finally:
        if started:
            ray.shutdown()
    return EngineStats(setup, tally.finish(cluster, plan.actors), tally.outputs, found, todo)


def _setup(job: Job, sidecar: ArtifactSpec, plan: _Plan) -> Setup:
    op, detail = operating_point(sidecar)
    return Setup(
        model=sidecar.name, artifact=str(sidecar.path), backend=sidecar.backend,
        precision=sidecar.precision, device=plan.device,
        workers=plan.decoders, threads=plan.threads or 0, lanes=plan.actors,
        operating_point=op, operating_point_detail=detail,
        setup_seconds=time.perf_counter() - job.t_start, engine="ray",
    )  # fmt: skip


def _cluster(ray, plan: _Plan, resources) -> dict[str, Any]:
    """What the summary says of the cluster (read while connected)."""
    return {
        "address": ray.get_runtime_context().gcs_address,
        "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
        "cpus": resources.get("CPU", 0.0),
        "gpus": resources.get("GPU", 0.0),
        "decoders": plan.decoders,
        "actors": plan.actors,
    }


def _dataset(ray, job: Job, sidecar: ArtifactSpec, plan: _Plan, todo: list[tuple[int, str]]):
    """from_items → decoders → model actors, in the inputs' order."""
    config = job.config
    from ray.data import ActorPoolStrategy, DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # rows reach the CSV in sorted order
    ds = ray.data.from_items(
        [{"index": i, "path": rel} for i, rel in todo],
        override_num_blocks=max(1, math.ceil(len(todo) / config.batch_size)),
    )
    # Ray 2.60 takes actor restarts and retries only as remote args, which it warns it will
    # stop taking in 2.64 (hence ray<2.64 in the extra).
    common = dict(
        batch_size=config.batch_size,
        batch_format="numpy",
        max_restarts=_RESTARTS,
        max_task_retries=_TASK_RETRIES,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            Decoder,
            fn_constructor_kwargs={
                "root": str(config.root), "size": sidecar.size,
                "timeout": config.decode_timeout, "eligibility": config.eligibility,
            },
            compute=ActorPoolStrategy(size=plan.decoders),
            num_cpus=plan.decoder_cpus,
            **common,
        )  # fmt: skip
        return ds.map_batches(
            Scorer,
            fn_constructor_kwargs={
                "sidecar": str(sidecar.path),
                "device": plan.device,
                "root": str(config.root),
                "masks_dir": str(config.masks_dir) if config.masks_dir else None,
                "seg_dir": str(config.seg_dir) if config.seg_dir else None,
                "sr_dir": str(config.sr_dir) if config.sr_dir else None,
                "batch_size": config.batch_size,
                "threads": plan.threads,
                "model_only_iters": config.model_only_iters,
            },
            compute=ActorPoolStrategy(size=plan.actors),
            **plan.actor_resources,
            **common,
        )


@dataclass
class _Tally:
    """What the driver adds up from the rows it keeps: every row carries its own file's
    figures (decode, its share of the batch's model time, its outputs, decoder restarts),
    so a row dropped as a repeat takes exactly its own figures with it."""

    loop: LoopStats
    outputs: OutputStats = field(default_factory=OutputStats)
    actors: dict[str, float] = field(default_factory=dict)  # actor process → model-only images/s
    duplicates: int = 0
    first_rows_s: float | None = None  # pass start → first rows: starting actors, the model

    def add(self, block: dict[str, np.ndarray], keep: list[int]) -> None:
        """A block's kept rows' figures; every row's actor and its model-only rate."""
        times = self.loop.times
        for j in keep:
            times["decode"] += float(block["decode_s"][j])
            times["compute"] += float(block["compute_s"][j])
            times["transfer"] += float(block["transfer_s"][j])
            self.loop.worker_restarts += int(block["decoder_restarts"][j])
            written = written_of(block, j)
            self.outputs.add(written)  # (a path is kept once)
        for j in range(len(block["actor"])):
            name = str(block["actor"][j])
            self.actors[name] = max(self.actors.get(name, 0.0), float(block["model_only"][j]))

    def finish(self, cluster: dict[str, Any], actors: int) -> LoopStats:
        """The loop's stats with the cluster's account and the model-only figure."""
        self.loop.cluster = {
            **cluster,
            "actor_processes": len(self.actors),
            "duplicates_dropped": self.duplicates,
            "first_rows_s": self.first_rows_s,
        }
        # The first actors timed the model at the same moment (their start), so their sum is
        # the cluster's; a restarted actor timed its own while the others scored, and is left
        # out.
        first = list(self.actors.values())[:actors]
        if first and all(first):
            self.loop.model_only = {f"{len(first)} model actor(s) at once": sum(first)}
        return self.loop


def _drain(ray, ds, job: Job, tally: _Tally, total: int) -> None:
    """Append the rows the model actors return, each path once, one fsync'd write per block,
    adding their figures to `tally`."""
    loop = tally.loop
    written = set(job.preds.done)
    done = 0
    t_prev = time.perf_counter()
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            t_got = time.perf_counter()
            loop.times["wait"] += t_got - t_prev
            if tally.first_rows_s is None:
                tally.first_rows_s = t_got - loop.t_loop
            keep = []
            for j, path in enumerate(block["path"]):
                if path in written:  # a batch run again after an actor died
                    tally.duplicates += 1
                else:
                    written.add(path)
                    keep.append(j)
            rows = [[str(block[c][j]) for c in CSV_COLUMNS] for j in keep]
            tally.add(block, keep)
            job.preds.append(rows)
            t_end = time.perf_counter()
            loop.times["write"] += t_end - t_got
            if rows:
                loop.latencies.append(time.time() - float(np.min(block["t_decoded"])))
                loop.marks.append((t_end, sum(1 for r in rows if not r[5])))
            done += len(rows)
            if job.config.progress:
                job.config.progress(done, total)
            t_prev = time.perf_counter()
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None)  # an actor's own refusal, e.g. a disk that is full
        if isinstance(cause, ScoreError | ledger.LedgerError):
            raise cause from None
        raise ScoreError(_ray_failure(err)) from None


def _ray_failure(err: BaseException) -> str:
    """The Ray run's failure in one line: the last line of Ray's wrapped error is its cause."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"the Ray run failed: {lines[-1] if lines else type(err).__name__}"
