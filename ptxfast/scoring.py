"""Score a folder of chest X-rays with an exported model: one CSV row per file, never a crash.

`score_folder(root, out, model=...)` finds the inputs under `root`, decodes them in DataLoader
worker processes while the main process runs the model, and appends one row per file to `out`:

    path,sop_instance_uid,probability,label,mask_area,error

- path: relative to `root`, with "/" separators (so shard CSVs and resumed runs agree);
- probability: the artifact's image probability (temperature-scaled when its operating point
  is calibrated); label: 1 when it exceeds the artifact's operating threshold (its sidecar's
  `operating_point`, else its recorded label threshold; `Predictor.label`); mask_area: pixels
  above the pixel threshold at the model's S×S input (empty for classifiers); error: one line
  when the file could not be scored (then probability, label and mask_area are empty).

Eligibility. Only chest radiographs get a label (`ptxfast.data.eligibility`): the decoding
worker checks the header it has just parsed — Modality, ViewPosition, BodyPartExamined —
before any pixel is decoded, and a file the rule refuses gets a row with an empty probability
and an error `not eligible: Modality CT (chest radiographs only; --eligibility off to score
anyway)`. Such rows are counted apart from failures (`not_eligible` in the summary, with the
rule and the reasons). `eligibility="strict"` also refuses files whose header says nothing,
"off" scores every decodable image.

Inputs. The tree is walked recursively (names starting with "." are ignored, symlinked folders
are not followed) and the files are sorted by relative path. A file is an input when its bytes
say DICOM (`dicom.is_dicom`: the "DICM" preamble or a bare data set), PNG or JPEG, or when its
name claims to be one (.dcm/.dicom/.dic, .png, .jpg/.jpeg): a claimed file that is not what
it says gets a row with an error rather than being passed over silently. Files that cannot be
opened are rows with an error too. Everything else is skipped and counted.

Durability. Rows are written batch by batch with one write, flushed and fsync'd, after the
masks of that batch, so the CSV is the record of what is done. `resume=True` keeps the longest
prefix of complete rows (a torn last line from a killed run is cut off and its file scored
again) and skips every path already there; after any number of interruptions the CSV holds
exactly one row per file.

Sharding. `shard=(k, n)` keeps the k-th of every n files of the sorted list (i % n == k - 1),
so n processes, on one machine or many, cover the folder exactly once. Combine their CSVs by
keeping one header:

    head -n 1 preds-1.csv > preds.csv && tail -q -n +2 preds-*.csv >> preds.csv

Outputs. With `masks_dir`, each positive gets `<masks_dir>/<path>.mask.png` (0/255 at the
source's Rows×Columns) and `<path>.overlay.png` (the image with the mask outlined); with
`seg_dir`, each positive DICOM gets `<seg_dir>/<SOPInstanceUID>.dcm`, a BINARY DICOM
Segmentation referencing its source. PNG/JPEG inputs get PNGs but no SEG (counted in the
summary). Both need an artifact exported with its mask output (`--return-mask`). With
`sr_dir`, every scored DICOM gets `<sr_dir>/<SOPInstanceUID>.dcm`, a DICOM SR (TID 1500) with
the finding, the probability and the model (`outputs.write_dicom_sr`), referencing the SEG of
a positive when `seg_dir` is given too; any artifact will do. They are written by two threads
while scoring goes on, and a batch's rows reach the CSV once its files exist. Names come from
`outputs.safe_output_path`: an invalid UID or an input path that is not plain names gives a
hash-named file (counted in `names_replaced`), never a path outside.

One writer, clear failures (`ledger`). The CSV is locked (`<out>.lock`) before it is read or
written, so a second run on the same `--out` is refused at start. A destination that cannot
be written (disk full, quota, read-only, I/O error, folder gone) stops the run with
`ledger.WriteFailed`: rows fsync'd before stay, a half-written row is cut off, and a batch
whose outputs failed that way has no rows, so `--resume` writes rows and outputs again.

Speed. Decoding runs in `workers` processes, each timing its own files; the batches travel
with their metadata, are pinned and copied asynchronously on CUDA, and the model runs while
the next batches decode. On CUDA one batch is in flight: its copies, kernels and result
copies are queued before the previous batch's rows are written, so writing rows and fetching
the next batch overlap the GPU's work (transfer and compute are GPU times from CUDA events). On
a CPU the model runs in lanes, one batch per core on one thread each (compute time is summed
over the lanes), and one decoding process shares the cores. The summary compares the
end-to-end throughput with the model alone on a preloaded batch of the same size (the best of
the run's lanes and one batch on every core): where decoding a file costs a sizeable share of
the model's pass over it (1024² DICOMs scored at 64² on 2 cores), the pipeline cannot reach
the model-only figure, because the cores that decode are the model's.

Crashes. A decoder that raises gives its file an error row. A decoder that kills its worker
process (a segfault in a codec, the OOM killer) is detected; the file it was decoding gets an
error row and the loader restarts on the files left. With `workers=0` decoding runs in the
scoring process itself, which has no such protection.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ptxfast import ledger
from ptxfast.benchmarking.timing import latency_ms
from ptxfast.data.dicom import ImageReadError, NotEligible, is_dicom, load_image, read_dataset
from ptxfast.data.eligibility import DEFAULT_RULE, RULES, reason_of
from ptxfast.environment import sync
from ptxfast.runtime import pad_batch

CSV_COLUMNS = ("path", "sop_instance_uid", "probability", "label", "mask_area", "error")
CSV_HEADER = ",".join(CSV_COLUMNS) + "\n"
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
PNG_SUFFIXES = frozenset({".png"})
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # any POSIX file name round-trips
# Scored batches whose rows may wait for their mask outputs before the scorer waits too.
_MAX_UNWRITTEN = 8
_WORKER_FAILURE = re.compile(r"DataLoader (worker|timed out)")
_PIDS = re.compile(r"pid(?:\(s\))?\s+([\d, ]+)")


class ScoreError(ValueError):
    """A scoring run that cannot start as asked; the message says what to do."""


# ------------------------------------------------------------------------------ the summary


@dataclass
class ScoreSummary:
    """What a scoring run did and how fast; `as_dict()` is the `--json` file."""

    root: str
    out: str
    model: str  # the artifact's model name
    artifact: str | None  # its sidecar, None for a predictor passed in
    backend: str
    precision: str
    device: str
    batch_size: int
    workers: int
    threads: int  # torch intra-op threads per model lane (CPU) / of the scoring process
    shard: tuple[int, int]
    files: int = 0  # inputs in this shard (scored now, failed now, or already in the CSV)
    already: int = 0  # rows found in the CSV by --resume
    scored: int = 0
    failed: int = 0
    skipped: int = 0  # files that are not images (and do not claim to be)
    positives: int = 0
    # Rows refused by the eligibility rule (not chest radiographs), counted apart from
    # `failed`; `eligibility` holds the rule, these counts by reason, and the files scored on
    # no evidence this run (PNG/JPEG, silent headers).
    not_eligible: int = 0
    eligibility: dict[str, Any] = field(default_factory=dict)
    # How the artifact labels (`operating.describe`) and its sidecar's operating point.
    operating_point: str = ""
    operating_point_detail: dict[str, Any] | None = None
    torn_line_dropped: bool = False
    masks_written: int = 0
    segs_written: int = 0
    seg_not_dicom: int = 0  # positives read from PNG/JPEG: mask PNGs but no DICOM SEG
    srs_written: int = 0
    sr_not_dicom: int = 0  # scored PNG/JPEG inputs, which get no DICOM SR
    # Inputs whose output names (SOPInstanceUID or input path) were unsafe and replaced by a
    # hash of the input's path (outputs.safe_output_path).
    names_replaced: int = 0
    output_errors: list[str] = field(default_factory=list)
    skipped_examples: list[str] = field(default_factory=list)
    worker_restarts: int = 0
    seconds: float = 0.0  # wall time of the whole call
    setup_seconds: float = 0.0  # finding files, loading and warming the model
    loop_seconds: float = 0.0  # first batch asked for → last row written
    batches: int = 0
    images_per_s: float | None = None  # images scored / loop_seconds
    # Throughput once the pipeline is full: batches decoded ahead during setup are left out;
    # None for runs too short to time that way (images_per_s then stands for it).
    steady_images_per_s: float | None = None
    # p50/p90/p95/p99 per batch, from the decoded batch reaching the scorer to its rows written
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    time_s: dict[str, float] = field(default_factory=dict)  # decode/wait/transfer/compute/write
    gpu: dict[str, Any] | None = None
    lanes: int = 1  # batches the model runs at once (CPU: one per core, one thread each)
    # The predictor alone on a preloaded batch of the run's size: on a CPU the best of the
    # run's lanes x threads and one lane on every core, so the ratio is against the fastest
    # the model goes alone.
    model_only_images_per_s: float | None = None
    model_only_config: str | None = None  # the best entry of model_only_by_config
    model_only_by_config: dict[str, float] = field(default_factory=dict)  # "2 lanes x 1 thread"
    ratio: float | None = None  # steady end-to-end / model-only
    engine: str = "local"  # or "ray" (ptxfast.score_ray)
    # --engine ray: address, nodes, cpus, gpus, decoders, actors (asked for), actor_processes
    # (that returned rows: more than actors after a restart), duplicates_dropped
    cluster: dict[str, Any] | None = None
    # What a CPU can reach when its decoders share the model's cores: 1 / (1/M + D/c), with M
    # the model-only images/s, D the decoders' CPU seconds per image (process CPU time in the
    # workers, not wall) and c the cores; and the end-to-end rate as a share of it.
    decode_cpu_s_per_image: float | None = None
    cores: int | None = None
    shared_core_bound_images_per_s: float | None = None
    bound_share: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as null)."""
        return _clean(asdict(self))


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """The files of one shard: what will be scored and what was passed over."""

    inputs: list[str]  # relative POSIX paths, sorted
    skipped: list[str]
    candidates: int  # files in the whole tree (all shards), before sniffing


def parse_shard(text: str) -> tuple[int, int]:
    """ "K/N" → (K, N) with 1 ≤ K ≤ N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise ScoreError(f"--shard {text!r}: write K/N with 1 <= K <= N, e.g. --shard 2/4")
    return int(m[1]), int(m[2])


def _walk(root: Path, exclude: Sequence[Path]) -> list[str]:
    excluded = {os.path.normcase(os.path.abspath(p)) for p in exclude}
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        # Hidden folders (.git, .cache) and our own output folders are not inputs.
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".")
            and os.path.normcase(os.path.abspath(os.path.join(folder, d))) not in excluded
        ]
        for name in files:
            full = os.path.join(folder, name)
            if name.startswith(".") or os.path.normcase(os.path.abspath(full)) in excluded:
                continue
            found.append(Path(os.path.relpath(full, root)).as_posix())
    found.sort()
    return found


def _claims_image(rel: str) -> bool:
    suffix = os.path.splitext(rel)[1].lower()
    return suffix in DICOM_SUFFIXES or suffix in PNG_SUFFIXES or suffix in JPEG_SUFFIXES


def _is_input(path: Path, rel: str) -> bool:
    """DICOM, PNG or JPEG by content, or a name claiming one; unopenable files count too."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return True  # a row says why it could not be read
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return True
    return _claims_image(rel) or is_dicom(path)


def find_inputs(
    root: str | os.PathLike,
    shard: tuple[int, int] = (1, 1),
    exclude: Sequence[str | os.PathLike] = (),
) -> Inputs:
    """The input files of shard `shard` = (k, n) under `root`, in sorted relative-path order.

    The shard is cut from the sorted list of all files (i % n == k - 1), then only its own
    files are opened to decide what they are; `exclude` names files or folders to leave out
    (the run's own outputs when they sit inside `root`).
    """
    root = Path(root)
    k, n = shard
    if not 1 <= k <= n:
        raise ScoreError(f"shard {k}/{n}: K must be between 1 and N")
    candidates = _walk(root, [Path(p) for p in exclude])
    inputs, skipped = [], []
    for rel in candidates[k - 1 :: n]:
        (inputs if _is_input(root / rel, rel) else skipped).append(rel)
    return Inputs(inputs, skipped, len(candidates))


# --------------------------------------------------------------------------------- the CSV


class _Counted:
    """Lines for csv.reader, counting the bytes handed out and whether the last had no end."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.consumed = 0
        self.torn = False

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self.consumed += len(line.encode(**_ENCODING))
            self.torn = not line.endswith("\n")
            yield line


def read_done(path: Path) -> tuple[set[str], int, bool]:
    """(paths with a row, byte length of the complete rows, whether a torn tail follows them).

    Only the last record may be incomplete (a run killed mid-write); anything else that is not
    a row of six fields is refused, since silently dropping rows would lose results.
    """
    data = path.read_bytes()
    header = CSV_HEADER.encode()
    if not data.startswith(header):
        if header.startswith(data):  # killed while writing the header itself
            return set(), 0, bool(data)
        raise ScoreError(
            f"{path} is not a ptxfast predictions CSV (its first line is not "
            f"{CSV_HEADER.strip()!r}); choose another --out or pass --overwrite"
        )
    text = data[len(header) :].decode(**_ENCODING)
    lines = text.split("\n")
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    counted = _Counted(lines)
    done: set[str] = set()
    good = len(header)
    records = 0
    size = len(data) - len(header)
    reader = csv.reader(counted)
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error:  # the file ends inside a quoted field: a torn final record
            break
        records += 1
        if counted.torn or len(record) != len(CSV_COLUMNS):
            if counted.torn or counted.consumed == size:
                break  # the final record: torn by a kill, cut off and scored again
            raise ScoreError(
                f"{path}: record {records} has {len(record)} fields, not {len(CSV_COLUMNS)}; "
                "fix or remove that line, or start again with --overwrite"
            )
        done.add(record[0])
        good = len(header) + counted.consumed
    return done, good, good < len(data)


class _PredsCsv:
    """The predictions file: locked for this run alone, checked (and, on resume, read) first,
    then opened for appending batch by batch with fsync. Nothing in an existing file changes
    before `open()`; a write that fails cuts the file back to its complete rows and raises
    `ledger.WriteFailed`."""

    def __init__(self, path: Path, resume: bool, overwrite: bool) -> None:
        self.path = path
        self.done: set[str] = set()
        self.torn = False
        self.good = 0  # bytes of complete rows to keep (resume); 0 starts a new file
        self.lock = ledger.LedgerLock(path)
        if path.is_dir():
            raise ScoreError(f"--out {path} is a folder; give a file name such as preds.csv")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()  # before the CSV is read: another run may be appending to it
            self.created = not path.exists()
            exists = not self.created and path.stat().st_size > 0
            open(path, "a").close()  # writable? (creates it, changes nothing)
        except OSError as err:
            self.lock.release()
            raise ScoreError(f"cannot write --out {path}: {err.strerror or err}") from None
        try:
            if exists and not (resume or overwrite):
                raise ScoreError(
                    f"{path} already has rows; pass --resume to continue it (files already "
                    "there are skipped) or --overwrite to start again"
                )
            if exists and resume and not overwrite:
                self.done, self.good, self.torn = read_done(path)
        except BaseException:
            self.lock.release()
            raise

    def discard(self) -> None:
        """Remove the file the writability check created, when the run stops before `open`."""
        if self.created and not hasattr(self, "file"):
            with contextlib.suppress(OSError):
                if self.path.stat().st_size == 0:
                    self.path.unlink()
        self.lock.release()

    def open(self) -> None:
        """Cut a torn last line (resume) or write the header (new file), durably."""
        good = self.good
        try:
            # Unbuffered: a failed write leaves nothing queued to be retried at close.
            self.file = open(self.path, "r+b" if good else "wb", buffering=0)
        except OSError as err:
            raise ScoreError(f"cannot write --out {self.path}: {err.strerror or err}") from None
        self.size = good  # bytes of complete rows on disk
        if good:
            self.file.truncate(good)  # drop a torn last line; its file is scored again
            self.file.seek(good)
            self._write(b"")
        else:
            self._write(CSV_HEADER.encode())
            _fsync_dir(self.path.parent)  # the new name survives a power cut too

    def _write(self, data: bytes) -> None:
        """Write `data` whole and fsync; on a write error cut back to the complete rows."""
        try:
            view = memoryview(data)
            while view:
                view = view[self.file.write(view) :]
            os.fsync(self.file.fileno())
        except OSError as err:
            with contextlib.suppress(OSError):  # shrinking needs no space
                self.file.truncate(self.size)
                self.file.seek(self.size)
            if ledger.is_write_error(err):
                raise ledger.write_failed(self.path, err) from None
            raise
        self.size += len(data)

    def append(self, rows: Sequence[Sequence[str]]) -> None:
        """Write rows with one write call, then fsync."""
        if not rows:
            return
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        self._write(buf.getvalue().encode(**_ENCODING))

    def close(self) -> None:
        if hasattr(self, "file"):
            with contextlib.suppress(OSError):
                self.file.close()
        self.lock.release()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_writable(folder: Path, option: str) -> None:
    """Create `folder` and write a probe file in it, so a bad path fails before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ptxfast-probe-"):
            pass
    except OSError as err:
        raise ScoreError(f"cannot write {option} {folder}: {err.strerror or err}") from None


# ------------------------------------------------------------------------- decoding workers


@dataclass
class _Meta:
    """Per-file results of decoding, carried with the batch."""

    index: int
    sop_instance_uid: str | None = None
    error: str | None = None
    rows: int = 0
    columns: int = 0
    dicom: bool = False
    cpu_seconds: float = 0.0  # CPU time its decode took (the worker process's, or this thread's)
    unchecked: bool = False  # eligible on no evidence (PNG/JPEG, a header that says nothing)


class _Batch:
    """A collated batch: the decoded images stacked, plus every file's metadata and decode time."""

    def __init__(self, images: torch.Tensor | None, ok: list[int], meta: list[_Meta], secs: float):
        self.images = images  # len(ok)×1×S×S float32, or None when no file decoded
        self.ok = ok  # positions in `meta` of the decoded files, in `images` order
        self.meta = meta
        self.decode_seconds = secs  # summed over the files, measured inside the worker

    def pin_memory(self) -> _Batch:
        """Called by the DataLoader's pinning thread on CUDA runs."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def _one_line(err: BaseException, path: Path) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    prefix = f"{os.fspath(path)}: "
    if text.startswith(prefix):  # the row already names the file
        text = text[len(prefix) :]
    if not isinstance(err, ImageReadError):
        text = f"{type(err).__name__}: {text}"
    return text


def _sop_of(path: Path) -> str | None:
    """The SOPInstanceUID of a DICOM whose pixels failed, when its header still reads."""
    try:
        return str(read_dataset(path, stop_before_pixels=True).get("SOPInstanceUID", "")) or None
    except Exception:
        return None


class _Files(Dataset):
    """Decodes file i of `paths` to size×size; failures become metadata, never exceptions.

    `state` is a shared-memory int64 tensor: the decoding process's pid while a file is being
    decoded, -1 once done, so the file that killed a worker can be named.
    """

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        size: int,
        state: torch.Tensor,
        eligibility: str = DEFAULT_RULE,
    ):
        self.root = root
        self.paths = paths
        self.size = size
        self.state = state
        self.eligibility = eligibility

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray | None, _Meta, float]:
        self.state[i] = os.getpid()
        path = self.root / self.paths[i]
        meta = _Meta(index=i)
        # In a worker process decoding is all that runs, so its process CPU time counts every
        # thread a codec starts; in the scoring process (workers=0) only this thread's is ours.
        cpu = time.process_time if torch.utils.data.get_worker_info() else time.thread_time
        t0, c0 = time.perf_counter(), cpu()
        img = None
        try:
            if os.path.getsize(path) == 0:
                raise ImageReadError(f"{path}: empty file (0 bytes)")
            with warnings.catch_warnings():
                # e.g. "N frames; using the first": the row is the place for results.
                warnings.simplefilter("ignore")
                # The rule reads the header this decode parses, before its pixels.
                img, info = load_image(path, self.size, eligibility=self.eligibility)
            meta.sop_instance_uid = info.sop_instance_uid
            meta.rows, meta.columns = info.rows, info.columns
            meta.dicom = info.transfer_syntax_uid is not None
            meta.unchecked = info.eligibility_note is not None
        except NotEligible as err:
            meta.error = _one_line(err, path)
            meta.sop_instance_uid = _sop_of(path)
        except Exception as err:  # any decoder failure is this file's error, not the run's
            meta.error = _one_line(err, path)
            if isinstance(err, MemoryError):
                meta.error = "out of memory while decoding"
            meta.sop_instance_uid = _sop_of(path)
        secs = time.perf_counter() - t0
        meta.cpu_seconds = cpu() - c0
        self.state[i] = -1
        return img, meta, secs


def _collate(items: list[tuple[np.ndarray | None, _Meta, float]]) -> _Batch:
    ok = [j for j, (img, _, _) in enumerate(items) if img is not None]
    images = None
    if ok:
        images = torch.from_numpy(np.stack([items[j][0] for j in ok]))[:, None]
    return _Batch(images, ok, [m for _, m, _ in items], sum(s for _, _, s in items))


def _worker_init(_: int) -> None:
    # One decode per process: the resize's numpy/BLAS calls must not spawn thread pools
    # that compete with the model for the cores (torch already runs 1 thread in workers).
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:
        pass


# --------------------------------------------------------------------------------- the run


def _check_masks(kind: str, return_mask: bool, what: str, export_command: str | None) -> None:
    if kind == "classifier":
        raise ScoreError(
            f"{what} is a classifier and has no mask; for --masks/--dicom-seg score with a "
            "segmenter or cascade artifact exported with --return-mask"
        )
    if not return_mask:
        fix = f"`{export_command} --return-mask`" if export_command else "--return-mask"
        raise ScoreError(
            f"{what} was exported without its mask output; --masks/--dicom-seg need one: "
            f"re-export it with {fix}"
        )


def _model_only(
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
        predictor(x)  # warm (a partial last batch may be a new shape)
        sync(predictor.device)
        t0 = time.perf_counter()

        def lane() -> int:
            done = 0
            while done < iters and (done == 0 or time.perf_counter() - t0 < budget_s):
                predictor(x)
                sync(predictor.device)
                done += 1
            return done

        if lanes == 1:
            done = lane()
        else:
            # New threads take torch's thread count as set above.
            with ThreadPoolExecutor(lanes) as pool:
                done = sum(pool.map(lambda _: lane(), range(lanes)))
        return done * x.shape[0] / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def _cores() -> int:
    """CPUs this process may run on (taskset and container limits included)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """Decoding processes a run starts when none are asked for (also what `ptxfast bench`
    assumes in its stage breakdown)."""
    cores = _cores()
    if device.type == "cuda":
        # The GPU outruns decoding (an H200 ran a 512² cascade at ~650 images/s, one worker
        # decoded ~65 1024² DICOMs/s): every core but the scoring process's decodes.
        return max(1, min(16, cores - 1))
    # CPU: decoding a radiograph costs a few percent of a model pass at the sizes models
    # run at, so one decoding process keeps the model fed (see _parallelism).
    return 1 if cores > 1 else 0


def _parallelism(
    device: torch.device, lanes: int | None, threads: int | None
) -> tuple[int, int | None]:
    """(lanes, torch threads per lane) for the model; threads None leaves torch's (GPU).

    On a CPU the default is one lane per core with one thread each: batches run side by side
    instead of one batch on every core. Small convolutions split over OpenMP threads wait on
    each other at every barrier, and a decoding worker that preempts one thread stalls the
    rest; a lane on its own thread loses only the time the decoder takes. On 2 cores at 64²,
    2 lanes x 1 thread ran the eb3un+eb3 artifact at 181-186 images/s against 120-150 for
    1 lane x 2 threads (and ~92 for one thread). Given one of the two, the other fills the
    cores.
    """
    if device.type != "cpu":
        return 1, None
    cores = _cores()
    if lanes is None and threads is None:
        return cores, 1
    if lanes is None:
        return max(1, cores // threads), threads
    return lanes, threads or max(1, cores // lanes)


class _Writer:
    """Turns a scored batch into CSV rows, the positives' masks into files and, with an SR
    folder, every scored DICOM into a DICOM SR.

    Mask outputs (re-reading the source at full size, PNG encoding, building a DICOM SEG) take
    tens of milliseconds per positive, longer than a GPU takes for a batch, so they are
    written by a small pool of threads while the model goes on; `rows` returns the futures,
    and a batch's rows go into the CSV only once its outputs exist (a row in the CSV means
    its files are there, so `--resume` never skips a positive whose mask is missing). A
    positive's SR is written after its SEG, which it references.
    """

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        summary: ScoreSummary,
        masks_dir: Path | None,
        seg_dir: Path | None,
        identity,
        threads: int = 2,
        *,
        sr_dir: Path | None = None,
    ) -> None:
        self.root, self.paths, self.s = root, paths, summary
        self.masks_dir, self.seg_dir, self.identity = masks_dir, seg_dir, identity
        self.sr_dir = sr_dir
        self.lock = threading.Lock()  # the summary's output counters
        self.replaced: set[str] = set()  # inputs with a hash-named output
        wanted = masks_dir is not None or seg_dir is not None or sr_dir is not None
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="outputs") if wanted else None

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def rows(
        self, batch: _Batch, prob, area, label, masks: dict[int, np.ndarray]
    ) -> tuple[list, list[Future]]:
        """One row per file of `batch`, and the futures of the outputs being written: PNG and
        SEG for each positive in `masks`, an SR for every scored file when asked."""
        rows, pending = [], []
        by_ok = {pos: j for j, pos in enumerate(batch.ok)}
        for pos, meta in enumerate(batch.meta):
            rel = self.paths[meta.index]
            sop = meta.sop_instance_uid or ""
            j = by_ok.get(pos)
            if j is None:
                rows.append([rel, sop, "", "", "", meta.error or "could not be decoded"])
                continue
            a = int(area[j])
            positive = bool(label[j])
            rows.append(
                [rel, sop, f"{float(prob[j]):.6f}", str(int(positive)), "" if a < 0 else str(a), ""]
            )
            mask = masks.get(j) if positive else None
            if self.pool is not None and (mask is not None or self.sr_dir is not None):
                score = float(prob[j])
                pending.append(self.pool.submit(self._scored, rel, meta, score, positive, mask))
        return rows, pending

    def _scored(
        self, rel: str, meta: _Meta, score: float, positive: bool, mask: np.ndarray | None
    ) -> None:
        """A scored file's outputs: its masks and SEG (positives), then its SR."""
        seg = self._outputs(rel, meta, mask) if mask is not None else None
        if self.sr_dir is not None:
            self._report(rel, meta, score, positive, seg)

    def _report(
        self, rel: str, meta: _Meta, score: float, positive: bool, seg: Path | None
    ) -> None:
        """Write the DICOM SR of one scored file (DICOMs only), referencing `seg`, its SEG."""
        import pydicom

        from ptxfast import outputs

        if not meta.dicom:
            with self.lock:
                self.s.sr_not_dicom += 1
            return
        if not meta.sop_instance_uid:
            self._error(f"{rel}: no SOPInstanceUID, so no DICOM SR")
            return
        path = self.root / rel
        target = None
        try:
            source = read_dataset(path, stop_before_pixels=True)
            seg_header = pydicom.dcmread(seg, stop_before_pixels=True) if seg else None
            name = outputs.safe_output_path(self.sr_dir, rel, ".dcm", uid=meta.sop_instance_uid)
            target = name.path
            outputs.write_dicom_sr(source, name.path, self.identity, score, positive, seg_header)
            with self.lock:
                self.s.srs_written += 1
            if name.replaced:
                self._replaced(rel)
        except OSError as err:
            if ledger.is_write_error(err):
                raise ledger.write_failed(target or err.filename or self.root, err) from None
            self._error(f"{rel}: {_one_line(err, path)}")
        except Exception as err:  # the score stands; the SR is reported as missing
            self._error(f"{rel}: {_one_line(err, path)}")

    def _replaced(self, rel: str) -> None:
        with self.lock:
            self.replaced.add(rel)
            self.s.names_replaced = len(self.replaced)

    def _outputs(self, rel: str, meta: _Meta, prob: np.ndarray) -> Path | None:
        """Write one positive's masks and SEG; returns the SEG's path when one was written.
        Problems of the file itself are reported beside its row; a destination that cannot be
        written raises `ledger.WriteFailed`, which keeps the batch's rows out of the CSV (so
        `--resume` writes row and outputs again)."""
        from ptxfast import outputs

        path = self.root / rel
        target = seg = None
        try:
            mask = outputs.source_mask(prob, meta.rows, meta.columns, self.identity.pixel_threshold)
            replaced = False
            if self.masks_dir is not None:
                image, _ = load_image(path)
                if image.shape != mask.shape:  # a reader that disagrees with its header
                    image = np.asarray(
                        torch.nn.functional.interpolate(
                            torch.from_numpy(image)[None, None], size=mask.shape, mode="area"
                        )[0, 0]
                    )
                names = outputs.mask_outputs(self.masks_dir, rel)
                replaced = any(n.replaced for n in names)
                target = names[0].path
                outputs.write_png_masks(mask, image, names[0].path, names[1].path)
                with self.lock:
                    self.s.masks_written += 1
            if self.seg_dir is not None:
                if not meta.dicom:
                    with self.lock:
                        self.s.seg_not_dicom += 1
                elif not meta.sop_instance_uid:
                    self._error(f"{rel}: no SOPInstanceUID, so no DICOM SEG")
                else:
                    source = read_dataset(path, stop_before_pixels=True)
                    name = outputs.safe_output_path(
                        self.seg_dir, rel, ".dcm", uid=meta.sop_instance_uid
                    )
                    replaced = replaced or name.replaced
                    target = name.path
                    seg = outputs.write_dicom_seg(source, mask, name.path, self.identity)
                    with self.lock:
                        self.s.segs_written += 1
            if replaced:
                self._replaced(rel)
            return seg
        except OSError as err:
            if ledger.is_write_error(err):
                raise ledger.write_failed(target or err.filename or self.root, err) from None
            self._error(f"{rel}: {_one_line(err, path)}")
        except Exception as err:  # the score stands; the mask is reported as missing
            self._error(f"{rel}: {_one_line(err, path)}")

    def _error(self, message: str) -> None:
        with self.lock:
            self.s.output_errors.append(message)


@dataclass
class _Job:
    """A validated scoring request: what score_folder hands to the run."""

    root: Path
    out: Path
    preds: _PredsCsv
    predictor: Any  # runtime.Predictor
    batch_size: int
    workers: int | None
    shard: tuple[int, int]
    masks_dir: Path | None
    seg_dir: Path | None
    sr_dir: Path | None
    summary_json: Path | None
    threads: int | None
    lanes: int | None
    prefetch_factor: int
    model_only_iters: int
    decode_timeout: float
    progress: Callable[[int, int], None] | None
    t_start: float
    eligibility: str = DEFAULT_RULE


def score_folder(
    root: str | os.PathLike,
    out: str | os.PathLike,
    model: str | os.PathLike | Any = None,
    device: str = "auto",
    batch_size: int = 16,
    workers: int | None = None,
    resume: bool = False,
    shard: tuple[int, int] = (1, 1),
    masks_dir: str | os.PathLike | None = None,
    seg_dir: str | os.PathLike | None = None,
    *,
    sr_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    summary_json: str | os.PathLike | None = None,
    exports_dir: str | os.PathLike = "exports",
    threads: int | None = None,
    lanes: int | None = None,
    prefetch_factor: int = 2,
    model_only_iters: int = 5,
    decode_timeout: float = 600.0,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "local",
    ray: Any = None,
    eligibility: str = DEFAULT_RULE,
) -> ScoreSummary:
    """Score every image under `root` into the CSV `out`; returns what happened and how fast.

    model: an artifact (model file or sidecar), None for the newest under `exports_dir`, or a
    `runtime.Predictor`. device: auto, cuda, cuda:N or cpu. workers: decoding processes
    (default: 1 on CPU, all cores but one (at most 16) on CUDA; 0 decodes in this process).
    lanes / threads (CPU): batches the model runs at once, and torch threads for each
    (default: one lane per core, one thread each; see `_parallelism`). masks_dir / seg_dir: PNG mask +
    overlay, and DICOM SEG, for every positive (need an artifact with a mask output). sr_dir:
    a DICOM SR for every scored DICOM (any artifact). model_only_iters: batches timed for the
    model-only throughput (0 skips it). engine: "local" (this machine) or "ray" (a Ray
    cluster, `ray` a `score_ray.RayOptions`; see ptxfast.score_ray). Output paths are checked
    before any work; see the module docstring for inputs, resume and shards. eligibility:
    "default", "strict" or "off" (see the module docstring, "Eligibility").
    """
    from ptxfast import artifact, runtime

    t_start = time.perf_counter()
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise ScoreError(f"{root} is not a folder; give the folder of DICOM/PNG/JPEG files")
    if batch_size < 1:
        raise ScoreError("--batch-size must be at least 1")
    if workers is not None and workers < 0:
        raise ScoreError("--workers must be 0 (decode in this process) or more")
    for value, option in ((lanes, "--lanes"), (threads, "--threads")):
        if value is not None and value < 1:
            raise ScoreError(f"{option} must be at least 1")
    if eligibility not in RULES:
        raise ScoreError(f"--eligibility {eligibility!r}: choose one of {', '.join(RULES)}")
    k, n = shard
    if not 1 <= k <= n:
        raise ScoreError(f"shard {k}/{n}: K must be between 1 and N")
    masks_dir = Path(masks_dir) if masks_dir is not None else None
    seg_dir = Path(seg_dir) if seg_dir is not None else None
    sr_dir = Path(sr_dir) if sr_dir is not None else None
    summary_json = Path(summary_json) if summary_json is not None else None
    if engine not in ("local", "ray"):
        raise ScoreError(f"--engine {engine!r}: choose local or ray")
    if engine == "ray":
        from ptxfast import score_ray

        score_ray.require_ray()
        ray = ray or score_ray.RayOptions()
        score_ray.check_options(ray)
        if isinstance(model, runtime.Predictor):
            raise ScoreError(
                "--engine ray loads the artifact in its model actors: pass its path, not a "
                "loaded Predictor"
            )

    # Everything that can be refused is refused before a file is decoded.
    if isinstance(model, runtime.Predictor):
        source = model
        if masks_dir is not None or seg_dir is not None:
            _check_masks(model.kind, model.return_mask, repr(model), None)
    else:
        try:
            source = artifact.read_sidecar(
                artifact.latest_artifact(exports_dir) if model is None else model
            )
        except artifact.ArtifactError as err:
            raise ScoreError(str(err)) from None
        if masks_dir is not None or seg_dir is not None:
            _check_masks(
                source["kind"],
                bool(source["return_mask"]),
                str(source.model_path),
                source.export_command,
            )
    for folder, option in (
        (masks_dir, "--masks"),
        (seg_dir, "--dicom-seg"),
        (sr_dir, "--dicom-sr"),
    ):
        if folder is not None:
            _check_writable(folder, option)
    if summary_json is not None:
        _check_writable(summary_json.parent, "--json")
    preds = _PredsCsv(out, resume, overwrite)
    # The model is loaded (sha256 checked, device and precision refused) before the CSV is
    # touched or a file decoded; on Ray its actors load it, and here only its bytes are checked.
    try:
        if engine == "ray":
            try:
                artifact.verify(source)
            except artifact.ArtifactError as err:
                raise ScoreError(str(err)) from None
            predictor = None
        else:
            predictor = source if isinstance(source, runtime.Predictor) else _load(source, device)
    except BaseException:  # the file it created goes, and the lock with it
        preds.discard()
        raise
    try:
        preds.open()
    except BaseException:
        preds.close()  # releases the lock too
        raise
    job = _Job(
        root, out, preds, predictor, batch_size, workers, (k, n), masks_dir, seg_dir, sr_dir,
        summary_json, threads, lanes, prefetch_factor, model_only_iters, decode_timeout,
        progress, t_start, eligibility,
    )  # fmt: skip
    try:
        if engine == "ray":
            return _finish(job, score_ray.run(job, source, ray, device))
        return _finish(job, _run(job))
    finally:
        preds.close()


def _make_loader(
    dataset: _Files, indices: list[int], job: _Job, workers: int, pin: bool
) -> Iterator[_Batch]:
    """An iterator over batches of `indices`; its workers start (and prefetch) at once."""
    dl = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=job.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin,
        prefetch_factor=job.prefetch_factor if workers else None,
        # One pass over the files: workers live as long as the pass (a restart after a
        # crashed worker makes a new loader).
        persistent_workers=False,
        worker_init_fn=_worker_init if workers else None,
        timeout=job.decode_timeout if workers else 0,
    )
    return iter(dl)


def _todo(job: _Job) -> tuple[Inputs, list[int]]:
    """The shard's inputs, and the positions of those without a row in the CSV yet (every
    engine scores exactly these)."""
    exclude = [
        job.out, job.preds.lock.path, job.masks_dir, job.seg_dir, job.sr_dir, job.summary_json,
    ]  # fmt: skip
    found = find_inputs(job.root, job.shard, [p for p in exclude if p])
    return found, [i for i, rel in enumerate(found.inputs) if rel not in job.preds.done]


def _identity(predictor):
    """Who made the masks, as the DICOM SEGs record it."""
    from ptxfast.outputs import ModelIdentity

    side = predictor.sidecar
    return ModelIdentity(
        name=predictor.name,
        backend=predictor.backend,
        precision=predictor.precision,
        sha256=str(side["sha256"]) if side is not None else "",
        pixel_threshold=float(predictor.thresholds.get("pixel") or 0.3),
        label_threshold=float(predictor.thresholds["label"]),
    )


def _run(job: _Job) -> ScoreSummary:
    from ptxfast.telemetry import GpuSampler

    predictor = job.predictor
    dev = predictor.device
    workers = job.workers if job.workers is not None else default_workers(dev)
    found, todo = _todo(job)

    # The decoding workers start first and fill their prefetch queues while the model warms.
    state = torch.zeros(len(found.inputs), dtype=torch.int64).share_memory_()
    dataset = _Files(job.root, found.inputs, predictor.size, state, job.eligibility)
    pin = dev.type == "cuda"
    it = _make_loader(dataset, todo, job, workers, pin) if todo else iter(())
    all_threads = torch.get_num_threads()
    lanes, threads = _parallelism(dev, job.lanes, job.threads)
    if threads:
        torch.set_num_threads(threads)  # lane threads started later take this count too
    # From here a worker that dies raises (from torch's SIGCHLD handler) wherever the main
    # process is; one dying during warm-up is remembered and handled when the loop starts.
    failure: RuntimeError | None = None
    warm = not todo
    while not warm:
        try:
            predictor.warmup(min(job.batch_size, len(todo)), iters=3)
            warm = True
        except RuntimeError as err:
            if not _WORKER_FAILURE.search(str(err)):
                raise
            failure = err

    side = predictor.sidecar
    summary = ScoreSummary(
        root=str(job.root),
        out=str(job.out),
        model=predictor.name,
        artifact=str(side.path) if side is not None else None,
        backend=predictor.backend,
        precision=predictor.precision,
        device=str(dev),
        batch_size=job.batch_size,
        workers=workers,
        threads=torch.get_num_threads(),
        lanes=lanes,
        shard=job.shard,
        files=len(found.inputs),
        already=len(found.inputs) - len(todo),
        skipped=len(found.skipped),
        skipped_examples=found.skipped[:5],
        torn_line_dropped=job.preds.torn,
        operating_point=_operating_point(predictor),
        operating_point_detail=(side or {}).get("operating_point"),
    )
    summary.eligibility = {"rule": job.eligibility, "unchecked": 0}
    writer = _Writer(
        job.root,
        found.inputs,
        summary,
        job.masks_dir,
        job.seg_dir,
        _identity(predictor),
        sr_dir=job.sr_dir,
    )
    want_masks = job.masks_dir is not None or job.seg_dir is not None
    summary.setup_seconds = time.perf_counter() - job.t_start

    times = dict(decode=0.0, wait=0.0, transfer=0.0, compute=0.0, write=0.0)
    latencies: list[float] = []
    marks: list[tuple[float, int]] = []  # (time a batch's rows were written, images in it)
    last_x: torch.Tensor | None = None
    pending = list(todo)
    done = 0

    # Scored batches whose rows wait for their mask outputs, oldest first; at most
    # `_MAX_UNWRITTEN` before the scorer waits for the oldest (the masks are held in memory).
    unwritten: deque[tuple[_InFlight, list, list[Future]]] = deque()

    def finish(launched: Future) -> None:
        """Wait for a launched batch's results, make its rows and start its outputs."""
        nonlocal last_x
        f: _InFlight = launched.result()
        scores = _results(f, predictor, times)
        t_w = time.perf_counter()
        rows, outputs = writer.rows(f.batch, *(scores or (None, None, None, {})))
        times["write"] += time.perf_counter() - t_w
        unwritten.append((f, rows, outputs))
        if f.x is not None and (f.x.shape[0] == job.batch_size or last_x is None):
            last_x = f.x
        commit(wait=len(unwritten) > _MAX_UNWRITTEN)

    def commit(wait: bool = False) -> None:
        """Append the rows of every leading batch whose outputs are written (waiting for the
        oldest when `wait`), in order, and account for them."""
        nonlocal done
        while unwritten and (wait or all(o.done() for o in unwritten[0][2])):
            f, rows, outputs = unwritten.popleft()
            wait_all(outputs)
            for o in outputs:  # a destination that cannot be written stops the run here
                if isinstance(o.exception(), ledger.WriteFailed):
                    raise o.exception()
            t_w = time.perf_counter()
            job.preds.append(rows)
            t_end = time.perf_counter()
            times["write"] += t_end - t_w
            latencies.append(t_end - f.t_got)
            marks.append((t_end, len(f.batch.ok)))
            done += len(f.batch.meta)
            if job.progress:
                job.progress(done, len(todo))
            wait = False

    # Batches in flight beyond the one being written: on CUDA one (the next batch's copies
    # and kernels are queued before the previous one's rows are written, so the host's work
    # never leaves the GPU idle); on a CPU one per lane, run by a pool of lane threads, so a
    # lane always has a batch queued while the main thread writes rows and fetches the next.
    pool = ThreadPoolExecutor(lanes, thread_name_prefix="lane") if lanes > 1 else None

    def launch(batch: _Batch, t_got: float) -> Future:
        args = (batch, predictor, dev, job.batch_size, want_masks, t_got)
        if pool is not None:
            return pool.submit(_launch, *args)
        now: Future = Future()
        now.set_result(_launch(*args))
        return now

    t_loop = time.perf_counter()
    decode_cpu = [0.0, 0]  # CPU seconds, files
    with GpuSampler(dev) as sampler, pool or contextlib.nullcontext(), writer:
        while pending:
            window: deque[Future] = deque()
            try:
                if failure is not None:
                    failure, err = None, failure
                    raise err
                t_prev = time.perf_counter()
                for batch in it:
                    t_got = time.perf_counter()
                    times["wait"] += t_got - t_prev
                    times["decode"] += batch.decode_seconds
                    decode_cpu[0] += sum(m.cpu_seconds for m in batch.meta)
                    decode_cpu[1] += len(batch.meta)
                    summary.eligibility["unchecked"] += sum(m.unchecked for m in batch.meta)
                    window.append(launch(batch, t_got))
                    while len(window) > lanes:
                        finish(window.popleft())
                    t_prev = time.perf_counter()
                while window:
                    finish(window.popleft())
                while unwritten:
                    commit(wait=True)
                pending = []
            except RuntimeError as err:
                if not _WORKER_FAILURE.search(str(err)):
                    raise
                # Scored batches keep their rows; launched ones whose rows are not in the CSV
                # are decoded and scored again.
                for launched in window:
                    launched.cancel()
                wait_all(window)
                while unwritten:
                    commit(wait=True)
                pending, failed = _recover(err, pending, job.preds, found.inputs, state)
                done += failed
                summary.worker_restarts += 1
                it = _make_loader(dataset, pending, job, workers, pin) if pending else iter(())
    loop = time.perf_counter() - t_loop
    torch.set_num_threads(all_threads)

    _count(summary, job.preds.path, {found.inputs[i] for i in todo})
    summary.loop_seconds = loop
    summary.batches = len(marks)
    summary.time_s = times
    summary.latency_ms = latency_ms(latencies)
    if summary.scored and loop > 0:
        summary.images_per_s = summary.scored / loop
    summary.steady_images_per_s = _steady(marks, t_loop, workers * job.prefetch_factor, lanes)
    if sampler.active:
        summary.gpu = sampler.stats.as_dict()
    if job.model_only_iters > 0 and last_x is not None:
        x = last_x
        x = pad_batch(x, job.batch_size)  # time the batch size the run used
        configs = [(lanes, threads)]
        if dev.type == "cpu":
            configs.append((1, min(all_threads, _cores())))  # one batch on every core
        for n, t in dict.fromkeys(configs):
            ips = _model_only(predictor, x, job.model_only_iters, n, t)
            key = f"{n} lane{'s' * (n > 1)}" + (f" x {t} thread{'s' * (t > 1)}" if t else "")
            summary.model_only_by_config[key] = ips
            if ips > (summary.model_only_images_per_s or 0.0):
                summary.model_only_images_per_s, summary.model_only_config = ips, key
        steady = summary.steady_images_per_s or summary.images_per_s
        if steady:
            summary.ratio = steady / summary.model_only_images_per_s
        if dev.type == "cpu" and decode_cpu[1]:
            _shared_core_bound(summary, decode_cpu[0] / decode_cpu[1], _cores(), steady)
    return summary


def _finish(job: _Job, summary: ScoreSummary) -> ScoreSummary:
    """Stamp the wall time and write the --json file (every engine's last step)."""
    summary.seconds = time.perf_counter() - job.t_start
    if job.summary_json is not None:
        try:
            job.summary_json.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
        except OSError as err:
            if ledger.is_write_error(err):
                raise ledger.write_failed(job.summary_json, err) from None
            raise
    return summary


def _shared_core_bound(
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


def _operating_point(predictor) -> str:
    """How the predictor labels, in one line (the sidecar's operating point when it has one)."""
    from ptxfast.operating import describe

    if predictor.sidecar is not None:
        return describe(predictor.sidecar)
    return f"p > {predictor.rule.threshold:g} ({predictor.name}'s default rule)"


def _load(sidecar, device: str):
    """The artifact's predictor on `device`; its refusals as ScoreError."""
    from ptxfast import runtime

    try:
        # "auto": the device type the artifact was exported for when it is here, else the CPU.
        return runtime.load_predictor(sidecar, device=device)
    except ValueError as err:  # PredictorError, ArtifactError (bytes not the sidecar's)
        raise ScoreError(str(err)) from None


class _InFlight:
    """A batch whose model pass has been launched: on CUDA its copies and kernels are queued
    (CUDA events mark where transfer and compute end), on a CPU they have already run."""

    def __init__(self, batch: _Batch, t_got: float) -> None:
        self.batch = batch
        self.t_got = t_got  # when the batch reached the scorer (its latency starts there)
        self.x: torch.Tensor | None = None  # the batch on the device (for the model-only timing)
        self.host: tuple | None = None  # prob, area, mask: host copies (mask None if unwanted)
        self.events: tuple | None = None  # CUDA: (start, copied, computed, fetched) events
        self.seconds = (0.0, 0.0)  # CPU: (transfer, compute)


def _launch(
    batch: _Batch, predictor, dev: torch.device, batch_size: int, want_masks: bool, t_got: float
) -> _InFlight:
    """Start the model on `batch`. On CUDA nothing here waits for the GPU: the host→device
    copy (from pinned memory), the model and the device→host copies of its outputs (into
    pinned memory) are queued on the stream, so the GPU works on this batch while the host
    writes the previous one's rows and fetches the next. On a CPU it all runs here."""
    f = _InFlight(batch, t_got)
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


def _results(f: _InFlight, predictor, times: dict[str, float]) -> tuple | None:
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


def _count(summary: ScoreSummary, csv_path: Path, paths: set[str]) -> None:
    """Scored / failed / not eligible / positives of this run's files, read back from the CSV
    (the record)."""
    summary.scored = summary.failed = summary.positives = summary.not_eligible = 0
    reasons: dict[str, int] = {}
    with open(csv_path, newline="", **_ENCODING) as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            if len(row) != len(CSV_COLUMNS) or row[0] not in paths:
                continue
            if row[2]:
                summary.scored += 1
                summary.positives += row[3] == "1"
            elif (reason := reason_of(row[5])) is not None:
                summary.not_eligible += 1
                reasons[reason] = reasons.get(reason, 0) + 1
            else:
                summary.failed += 1
    summary.eligibility.update(
        not_eligible=summary.not_eligible, eligible=summary.scored + summary.failed
    )
    summary.eligibility["reasons"] = dict(sorted(reasons.items()))


def _steady(marks: list[tuple[float, int]], t0: float, ahead: int, lanes: int = 1) -> float | None:
    """Images/s after the batches decoded ahead during setup (at most half the run) are done;
    None when too few batches are left to time (lanes finish their batches close together, so
    a span of a few batches says little): at least 4 per lane, and 8."""
    if not marks:
        return None
    skip = min(ahead, len(marks) // 2)
    if len(marks) - skip < 4 * max(lanes, 2):
        return None
    start = marks[skip - 1][0] if skip else t0
    images = sum(n for _, n in marks[skip:])
    span = marks[-1][0] - start
    return images / span if images and span > 0 else None


def _recover(
    err: RuntimeError,
    pending: list[int],
    preds: _PredsCsv,
    paths: Sequence[str],
    state: torch.Tensor,
) -> tuple[list[int], int]:
    """After a decoding worker died: error rows for the file(s) it was decoding; returns the
    files still to score (the CSV on disk says which rows were written) and the rows added."""
    with contextlib.suppress(Exception):
        preds.file.flush()
    done, _, _ = read_done(preds.path)
    left = [i for i in pending if paths[i] not in done]
    pids = {int(p) for m in _PIDS.finditer(str(err)) for p in re.findall(r"\d+", m[1])}
    started = [i for i in left if int(state[i]) > 0]
    culprits = [i for i in started if int(state[i]) in pids] if pids else started
    if not culprits:  # always make progress: the next file is the suspect
        culprits = started[:1] or left[:1]
    reason = " ".join(str(err).split())
    if "timed out" in reason:
        why = f"decoding did not finish ({reason})"
    else:
        why = f"the decoder crashed on this file ({reason})"
    preds.append([[paths[i], "", "", "", "", why] for i in culprits])
    for i in left:
        state[i] = 0
    blamed = set(culprits)
    return [i for i in left if i not in blamed], len(culprits)
