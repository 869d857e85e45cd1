"""`ptxfast score --engine ray`: the same scoring run spread over a Ray cluster with Ray Data.

The local engine decodes in a few processes of one machine and runs the model beside them; on a
cluster the two scale apart:

    sorted inputs (after --resume and --shard, as local)
      → ray.data.from_items                      one record per file: index, path
      → map_batches(_Decoder, concurrency=D)     CPU actors: ptxfast's reader at the model's size
      → map_batches(_Scorer, concurrency=A)      one per GPU (num_gpus=1), or CPU lanes: the
                                                 artifact loaded once (sha256 checked); masks and
                                                 SEGs written to the shared folder; CSV rows out
      → iter_batches on the driver               deduplicated by path, appended to the ledger

Everything a row holds is made by the local engine's own pieces: `decode.Files` decodes a
file (a failure is its error, never an exception), `decode.collate`, `pipeline.launch` and
`pipeline.results` run the model, `writer.OutputWriter` makes the rows and writes the outputs,
and the driver appends through the same `ledger.PredsCsv` (same columns, one fsync'd write per
batch, the same resume and lock), so a run started on one engine can be resumed on the other.

Faults. Both actor pools run with explicit Ray retry settings (`_RESTARTS` restarts per actor,
`_TASK_RETRIES` retries per batch): a decoder or model actor that dies is restarted and its
batch scored again. A batch can then reach the driver twice; the driver keeps the first row of
each path, so the CSV never holds two. A decoder actor decodes in a forked child process: a file
that kills the process decoding it (a codec's segfault, the OOM killer) kills the child, not
the actor; the batch is decoded again file by file, each in a fresh child, and a file that
kills `_DECODE_ATTEMPTS` children in a row gets an error row, so one bad file never fails a
block or the job. The driver killed outright loses only rows not yet fsync'd; `--resume`
scores the rest.

Resources. The model artifact, the inputs and the --masks/--dicom-seg/--dicom-sr folders must
be on a filesystem every node sees at the same path; the CSV is written by the driver alone. With GPUs
in the cluster (and an artifact exported for CUDA, or --device cuda) there is one model actor
per GPU and the other CPUs decode; without, every CPU is a model lane (one torch thread each,
as the local engine's lanes) and `decoders` share the cores (a radiograph costs a few percent
of a model pass to decode at the sizes CPUs run).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import socket
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptxfast import operating
from ptxfast.benchmarking.timing import latency_ms, model_only_images_per_s
from ptxfast.score import inputs, ledger, pipeline, speed
from ptxfast.score.config import ScoreError
from ptxfast.score.decode import Files, Meta, collate, worker_init
from ptxfast.score.dicom_out import model_identity
from ptxfast.score.ledger import CSV_COLUMNS
from ptxfast.score.run import Job, load
from ptxfast.score.summary import ScoreSummary, count, new_summary
from ptxfast.score.writer import OutputWriter, wait_outputs

INSTALL_HINT = "pip install 'ptxfast[ray]'"
_RESTARTS = 3  # times Ray restarts a dead decoder or model actor
_TASK_RETRIES = 3  # times Ray runs a batch again on a restarted actor
_DECODE_ATTEMPTS = 2  # fresh decoding processes a file may kill before it is an error row
_DECODER_CPUS_WITH_GPUS = 1.0  # a decoder's CPU share when GPUs run the model
_LANE_CPUS = 1.0  # a CPU model lane: one core, one torch thread
# On CPU-only clusters decoders take no CPU from the scheduler: they run on the lanes' cores,
# as the local engine's decoding worker does.
_DECODER_CPUS_ON_CPU = 0.0
# What OutputWriter counts in the summary, carried back from the model actors with the rows.
_COUNTERS = (
    "masks_written", "segs_written", "seg_not_dicom", "srs_written", "sr_not_dicom",
    "names_replaced",
)  # fmt: skip
_NULLABLE = {f.name for f in fields(Meta) if "None" in str(f.type)}


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


# ------------------------------------------------------------------------------- decoding


class _ChildDied(Exception):
    """The decoding process died (or hung and was killed) before it answered."""


def _child_main(conn, root: Path, size: int, eligibility: str) -> None:
    worker_init(0)
    while True:
        try:
            paths = conn.recv()
        except EOFError:  # the actor went away
            return
        state = torch.zeros(len(paths), dtype=torch.int64)
        files = Files(root, paths, size, state, eligibility)
        conn.send([files[i] for i in range(len(paths))])


class _Child:
    """One forked process that decodes for a decoder actor, started again after it dies."""

    def __init__(self, root: Path, size: int, timeout: float, eligibility: str) -> None:
        self.root, self.size, self.timeout = root, size, timeout
        self.eligibility = eligibility
        self.proc = None
        self.conn = None
        self.started = 0

    def decode(self, paths: list[str]) -> list[tuple]:
        """(image or None, _Meta, seconds) per path, as `decode.Files` gives them; raises _ChildDied."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(paths)
        if self.conn.poll(self.timeout):
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                pass
            self.proc.join(5)
            code = self.proc.exitcode
            self._stop()
            raise _ChildDied(f"its process exited with code {code}")
        self._stop()
        raise _ChildDied(f"no answer within {self.timeout:.0f} s")

    def _start(self) -> None:
        # fork: the child starts at once with ptxfast already imported, as DataLoader workers do.
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_child_main, args=(child, self.root, self.size, self.eligibility), daemon=True
        )
        self.proc.start()
        child.close()
        self.started += 1

    def _stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.kill()
                self.proc.join(5)
            self.conn.close()
        self.proc = self.conn = None


class _Decoder:
    """Ray Data stage: a batch of {index, path} records → decoded images and their metadata.

    Never raises for a file: a decoder failure is the file's `error`, and a file that kills
    the decoding process is isolated (see the module docstring)."""

    def __init__(self, root: str, size: int, timeout: float, eligibility: str) -> None:
        self.size = size
        # The rule runs in the decoding process, on the header it parses (as locally).
        self.child = _Child(Path(root), size, timeout, eligibility)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        before = self.child.started
        try:
            items = self.child.decode(paths)
        except _ChildDied:
            items = [self._isolated(p) for p in paths]
        restarts = max(0, self.child.started - before - (before == 0))
        return _decoded_columns(batch["index"], paths, items, self.size, restarts)

    def _isolated(self, path: str) -> tuple:
        why = ""
        for _ in range(_DECODE_ATTEMPTS):
            try:
                return self.child.decode([path])[0]
            except _ChildDied as err:
                why = str(err)
        if "no answer" in why:
            error = f"decoding did not finish ({why})"
        else:
            error = f"the decoder crashed on this file ({why}, {_DECODE_ATTEMPTS} times)"
        return None, Meta(index=0, error=error), 0.0


def _decoded_columns(
    index: np.ndarray, paths: list[str], items: list[tuple], size: int, restarts: int
) -> dict[str, np.ndarray]:
    n = len(paths)
    images = np.zeros((n, size, size), dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    for j, (img, _, _) in enumerate(items):
        if img is not None:
            images[j], ok[j] = img, True
    cols: dict[str, np.ndarray] = {"index": np.asarray(index, dtype=np.int64)}
    cols["path"] = np.asarray(paths, dtype=object)
    cols["image"], cols["ok"] = images, ok
    for f in fields(Meta):
        if f.name == "index":
            continue
        values = [getattr(m, f.name) for _, m, _ in items]
        if f.name in _NULLABLE:
            values = ["" if v is None else v for v in values]
        cols[f"meta_{f.name}"] = np.asarray(values, dtype=object)
    cols["decode_s"] = np.asarray([s for _, _, s in items], dtype=np.float64)
    cols["decoder_restarts"] = np.zeros(n, dtype=np.int64)
    cols["decoder_restarts"][:1] = restarts
    cols["t_decoded"] = np.full(n, time.time())
    return cols


def _items(batch: dict[str, np.ndarray]) -> list[tuple]:
    """The decoder's columns back into `decode.Files` items, each `Meta` indexed by its position."""
    items = []
    names = [f.name for f in fields(Meta) if f.name != "index"]
    for j in range(len(batch["path"])):
        kw = {}
        for name in names:
            v = batch[f"meta_{name}"][j]
            kw[name] = None if name in _NULLABLE and v == "" else _plain(v)
        meta = Meta(index=j, **kw)
        img = np.asarray(batch["image"][j], dtype=np.float32) if batch["ok"][j] else None
        items.append((img, meta, float(batch["decode_s"][j])))
    return items


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# ---------------------------------------------------------------------------------- model


class _Scorer:
    """Ray Data stage: decoded batches → CSV rows (the local engine's strings), with the
    positives' masks and SEGs (and the SRs) written before the rows are returned."""

    def __init__(
        self,
        sidecar: str,
        device: str,
        root: str,
        masks_dir: str | None,
        seg_dir: str | None,
        sr_dir: str | None,
        batch_size: int,
        threads: int | None,
        model_only_iters: int,
    ) -> None:
        from ptxfast import artifact

        if threads:
            torch.set_num_threads(threads)
        side = artifact.read_sidecar(sidecar)
        self.predictor = load(side, device)  # the sha256 is checked again here
        self.batch_size = batch_size
        self.want_masks = masks_dir is not None or seg_dir is not None
        self.predictor.warmup(batch_size, iters=2)
        self.model_only = 0.0
        if model_only_iters > 0:
            x = torch.rand(batch_size, 1, self.predictor.size, self.predictor.size)
            self.model_only = model_only_images_per_s(self.predictor, x, model_only_iters)
        self.paths: dict[int, str] = {}  # the current batch's positions → paths, for _Writer
        self.counts = ScoreSummary(
            root=root, out="", model=self.predictor.name, artifact=sidecar,
            backend=self.predictor.backend, precision=self.predictor.precision,
            device=str(self.predictor.device), batch_size=batch_size, workers=0,
            threads=torch.get_num_threads(), shard=(1, 1),
        )  # fmt: skip
        self.writer = OutputWriter(
            Path(root),
            self.paths,
            self.counts,
            Path(masks_dir) if masks_dir else None,
            Path(seg_dir) if seg_dir else None,
            model_identity(self.predictor),
            sr_dir=Path(sr_dir) if sr_dir else None,
        )
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        self.paths.clear()
        self.paths.update(enumerate(paths))
        b = collate(_items(batch))
        times = {"transfer": 0.0, "compute": 0.0}
        f = pipeline.launch(
            b, self.predictor, self.predictor.device, self.batch_size, self.want_masks, 0.0
        )
        scores = pipeline.results(f, self.predictor, times)
        rows, outputs = self.writer.rows(b, *(scores or (None, None, None, {})))
        wait_outputs(outputs)  # the files exist before their rows leave this actor
        n = len(rows)
        cols = {
            c: np.asarray([r[i] for r in rows], dtype=object) for i, c in enumerate(CSV_COLUMNS)
        }
        first = np.zeros(n, dtype=np.float64)
        counted = {key: getattr(self.counts, key) for key in _COUNTERS}
        for key, value in (
            ("compute_s", times["compute"]),
            ("transfer_s", times["transfer"]),
            ("model_only", self.model_only),
            *counted.items(),
        ):
            cols[key] = first.copy()
            cols[key][:1] = value
            if key in counted:
                setattr(self.counts, key, 0)
        cols["output_errors"] = np.asarray(
            ["\n".join(self.counts.output_errors)] + [""] * (n - 1), dtype=object
        )
        self.counts.output_errors = []
        cols["actor"] = np.asarray([self.name] * n, dtype=object)
        for key in ("decode_s", "decoder_restarts", "t_decoded"):
            cols[key] = batch[key]
        return cols


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


def _plan(resources: dict[str, float], device: str, sidecar, options: RayOptions, threads):
    cpus = int(resources.get("CPU", 0))
    gpus = int(resources.get("GPU", 0))
    if device == "auto":
        wanted = str(sidecar.get("device", "cpu"))
        device = "cuda" if gpus and wanted.startswith("cuda") else "cpu"
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


def run(job: Job, sidecar, options: RayOptions, device: str = "auto") -> ScoreSummary:
    """Score `job` on Ray; `job.preds` is open (and locked), the artifact's bytes checked."""
    ray = require_ray()
    started = _connect(ray, options.address)
    try:
        found, todo = inputs.todo(job.config, job.preds.done)
        resources = ray.cluster_resources()
        plan = _plan(resources, device, sidecar, options, job.config.threads)
        summary = _summary(ray, job, sidecar, plan, resources, found, todo)
        t_loop = time.perf_counter()
        marks: list[tuple[float, int]] = []
        if todo:
            ds = _dataset(ray, job, sidecar, plan, [(i, found.inputs[i]) for i in todo])
            marks = _drain(ray, ds, job, summary, t_loop, len(todo))
        loop = time.perf_counter() - t_loop
    finally:
        if started:
            ray.shutdown()
    count(summary, job.preds.path, {found.inputs[i] for i in todo})
    speed.fill_rates(summary, marks, t_loop, loop, 2 * plan.actors, plan.actors)
    steady = summary.steady_images_per_s or summary.images_per_s
    if steady and summary.model_only_images_per_s:
        summary.ratio = steady / summary.model_only_images_per_s
    return summary


def _summary(ray, job: Job, sidecar, plan: _Plan, resources, found, todo) -> ScoreSummary:
    config = job.config
    return new_summary(
        config, found, todo, job.preds.torn,
        model=str(sidecar["name"]), artifact=str(sidecar.path), backend=str(sidecar["backend"]),
        precision=str(sidecar["precision"]["requested"]), device=plan.device,
        workers=plan.decoders, threads=plan.threads or 0, lanes=plan.actors,
        eligibility={"rule": config.eligibility},  # files scored unchecked: counted locally only
        operating_point=operating.describe(sidecar),
        operating_point_detail=sidecar.get("operating_point"),
        setup_seconds=time.perf_counter() - job.t_start,
        time_s=dict(decode=0.0, wait=0.0, transfer=0.0, compute=0.0, write=0.0),
        engine="ray",
        cluster={
            "address": ray.get_runtime_context().gcs_address,
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "cpus": resources.get("CPU", 0.0),
            "gpus": resources.get("GPU", 0.0),
            "decoders": plan.decoders,
            "actors": plan.actors,
            "actor_processes": 0,
            "duplicates_dropped": 0,
            "first_rows_s": None,  # pass start → first rows: starting actors, loading the model
        },
    )  # fmt: skip


def _dataset(ray, job: Job, sidecar, plan: _Plan, todo: list[tuple[int, str]]):
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
            _Decoder,
            fn_constructor_kwargs={
                "root": str(config.root), "size": int(sidecar["input"]["size"]),
                "timeout": config.decode_timeout, "eligibility": config.eligibility,
            },
            compute=ActorPoolStrategy(size=plan.decoders),
            num_cpus=plan.decoder_cpus,
            **common,
        )  # fmt: skip
        return ds.map_batches(
            _Scorer,
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


def _drain(ray, ds, job: Job, summary: ScoreSummary, t_loop: float, total: int):
    """Append the rows the model actors return, each path once, one fsync'd write per block;
    returns (time written, images scored) per block for the steady rate."""
    times = summary.time_s
    written = set(job.preds.done)
    actors: dict[str, float] = {}  # actor process → its model-only images/s
    latencies: list[float] = []
    marks: list[tuple[float, int]] = []
    done = 0
    t_prev = time.perf_counter()
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            t_got = time.perf_counter()
            times["wait"] += t_got - t_prev
            if summary.cluster["first_rows_s"] is None:
                summary.cluster["first_rows_s"] = t_got - t_loop
            keep = []
            for j, path in enumerate(block["path"]):
                if path in written:  # a batch run again after an actor died
                    summary.cluster["duplicates_dropped"] += 1
                else:
                    written.add(path)
                    keep.append(j)
            rows = [[str(block[c][j]) for c in CSV_COLUMNS] for j in keep]
            _tally(summary, actors, block, keep)
            job.preds.append(rows)
            t_end = time.perf_counter()
            times["write"] += t_end - t_got
            if rows:
                latencies.append(time.time() - float(np.min(block["t_decoded"])))
                marks.append((t_end, sum(1 for r in rows if not r[5])))
            done += len(rows)
            if job.config.progress:
                job.config.progress(done, total)
            t_prev = time.perf_counter()
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None)  # an actor's own refusal, e.g. a disk that is full
        if isinstance(cause, ScoreError | ledger.LedgerError):
            raise cause from None
        raise ScoreError(_first_line(err)) from None
    summary.latency_ms = latency_ms(latencies)
    summary.cluster["actor_processes"] = len(actors)
    # The first actors timed the model at the same moment (their start), so their sum is the
    # cluster's; a restarted actor timed its own while the others scored, and is left out.
    first = list(actors.values())[: summary.cluster["actors"]]
    if first and all(first):
        key = f"{len(first)} model actor(s) at once"
        summary.model_only_images_per_s = summary.model_only_by_config[key] = sum(first)
        summary.model_only_config = key
    return marks


def _tally(summary: ScoreSummary, actors: dict[str, float], block, keep: list[int]) -> None:
    """Add a block's counters (carried on its kept rows) to the summary."""
    times = summary.time_s
    for j in keep:
        times["decode"] += float(block["decode_s"][j])
        times["compute"] += float(block["compute_s"][j])
        times["transfer"] += float(block["transfer_s"][j])
        for key in _COUNTERS:
            setattr(summary, key, getattr(summary, key) + int(block[key][j]))
        summary.worker_restarts += int(block["decoder_restarts"][j])
        if block["output_errors"][j]:
            summary.output_errors.extend(str(block["output_errors"][j]).split("\n"))
    for j in range(len(block["actor"])):
        name = str(block["actor"][j])
        actors[name] = max(actors.get(name, 0.0), float(block["model_only"][j]))


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"the Ray run failed: {lines[-1] if lines else type(err).__name__}"
