"""Decoding the inputs of a scoring run: the Dataset, its batches, and a loader that survives
crashed workers.

`Files` decodes file i to the model's S×S in a DataLoader worker process; every failure is the
file's metadata (`Meta.error`), never an exception, and the eligibility rule runs on the header
the decode has just parsed, before any pixel is decoded. `collate` stacks a batch's decoded
images and keeps every file's metadata beside them (`Batch`).

Crashes. A decoder that raises gives its file an error row. A decoder that kills its worker
process (a segfault in a codec, the OOM killer) is detected by `ResilientLoader`: the file it
was decoding becomes an error row (`CrashRows`) and the loader starts again on the files the
ledger does not have yet. With `workers=0` decoding runs in the scoring process itself, which
has no such protection.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydicom.uid import UID
from torch.utils.data import DataLoader, Dataset

from ptxfast.data.dicom import (
    EncodedFrame,
    ImageReadError,
    NotEligible,
    load_image,
    load_image_or_frame,
    read_dataset,
)
from ptxfast.data.dicom.info import one_line
from ptxfast.data.eligibility import DEFAULT_RULE
from ptxfast.score.folders import not_regular
from ptxfast.score.processes import clean_fork, helper_started, start_method

__all__ = ["Batch", "CrashRows", "Files", "LoaderSettings", "Meta", "ResilientLoader", "collate"]

_WORKER_FAILURE = re.compile(r"DataLoader (worker|timed out)")
_PIDS = re.compile(r"pid(?:\(s\))?\s+([\d, ]+)")


@dataclass
class Meta:
    """Per-file results of decoding, carried with the batch."""

    index: int
    sop_instance_uid: str | None = None
    error: str | None = None
    rows: int = 0
    columns: int = 0
    dicom: bool = False
    cpu_seconds: float = 0.0  # CPU time its decode took (the worker process's, or this thread's)
    unchecked: bool = False  # eligible on no evidence (PNG/JPEG, a header that says nothing)
    syntax: str | None = None  # the transfer syntax's name ("PNG/JPEG" without one), if read


class Batch:
    """A collated batch: the decoded images stacked, plus every file's metadata and decode time."""

    def __init__(
        self,
        images: torch.Tensor | None,
        ok: list[int],
        meta: list[Meta],
        secs: float,
        encoded: list[tuple[int, EncodedFrame]] | None = None,
    ):
        self.images = images  # len(ok)×1×S×S float32, or None when no file decoded
        self.ok = ok  # positions in `meta` of the decoded files, in `images` order
        self.meta = meta
        self.decode_seconds = secs  # summed over the files, measured inside the worker
        # (position in `meta`, frame) of files handed over still compressed, for the scoring
        # process to decode on the GPU (`gpu_decode.GpuFrames.finish` merges them in).
        self.encoded = encoded or []

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread on CUDA runs."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def _sop_of(path: Path) -> str | None:
    """The SOPInstanceUID of a DICOM whose pixels failed, when its header still reads."""
    try:
        return str(read_dataset(path, stop_before_pixels=True).get("SOPInstanceUID", "")) or None
    except Exception:
        return None


class HandOver:
    """Which frames the decoding workers hand over still compressed, for a GPU to decode:
    windowed grayscale frames of `syntaxes`, less every (transfer syntax, bits stored) pair the
    scoring process has turned back to the CPU (its first GPU frame differed from the CPU's).
    The turned-off pairs sit in shared memory, so workers started before the check decode those
    frames themselves instead of sending them on for the scoring process to decode one by one.
    """

    def __init__(self, syntaxes: frozenset[str]) -> None:
        self._row = {s: k for k, s in enumerate(sorted(syntaxes))}
        self._off = torch.zeros(len(self._row), 33, dtype=torch.bool).share_memory_()

    def turn_off(self, tsyntax: str, bits_stored: int) -> None:
        self._off[self._row[tsyntax], min(bits_stored, 32)] = True

    def __call__(self, tsyntax: str, bits_stored: int) -> bool:
        """Whether a frame of this pair is handed over (the reader's `HandOverRule`)."""
        row = self._row.get(tsyntax)
        return row is not None and not bool(self._off[row, min(bits_stored, 32)])


@dataclass(eq=False)
class Files(Dataset):
    """Decodes file i of `paths` (under `root`) to size×size; failures become metadata, never
    exceptions.

    `state` is a shared-memory int64 tensor: the decoding process's pid while a file is being
    decoded, -1 once done, so the file that killed a worker can be named.
    """

    root: Path
    paths: Sequence[str]
    size: int
    state: torch.Tensor
    eligibility: str = DEFAULT_RULE
    # The frames handed over still compressed, headers checked, for a GPU to decode; None:
    # everything is decoded here.
    hand_over: HandOver | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray | EncodedFrame | None, Meta, float]:
        self.state[i] = os.getpid()
        path = self.root / self.paths[i]
        meta = Meta(index=i)
        if (reason := not_regular(path)) is not None:  # never opened: a FIFO would block
            meta.error = reason
            self.state[i] = -1
            return None, meta, 0.0
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
                if self.hand_over is not None:
                    img, info = load_image_or_frame(
                        path, self.size, eligibility=self.eligibility, hand_over=self.hand_over
                    )
                else:
                    img, info = load_image(path, self.size, eligibility=self.eligibility)
            meta.sop_instance_uid = info.sop_instance_uid
            meta.rows, meta.columns = info.rows, info.columns
            meta.dicom = info.transfer_syntax_uid is not None
            meta.unchecked = info.eligibility_note is not None
            meta.syntax = syntax_name(info.transfer_syntax_uid)
            if isinstance(img, EncodedFrame):
                meta.syntax += " (header only, GPU decodes)"
        except NotEligible as err:
            meta.error = one_line(err, path)
            meta.sop_instance_uid = _sop_of(path)
        except Exception as err:  # any decoder failure is this file's error, not the run's
            meta.error = one_line(err, path)
            if isinstance(err, MemoryError):
                meta.error = "out of memory while decoding"
            meta.sop_instance_uid = _sop_of(path)
        secs = time.perf_counter() - t0
        meta.cpu_seconds = cpu() - c0
        self.state[i] = -1
        return img, meta, secs


def syntax_name(tsyntax: str | None) -> str:
    """A transfer syntax's name for the summary ("PNG/JPEG" for files without one)."""
    if tsyntax is None:
        return "PNG/JPEG"
    name = UID(tsyntax).name
    if name != tsyntax:
        return name
    # Text from the file: only a UID's characters reach the summary and the console.
    return f"unknown ({''.join(c for c in tsyntax[:64] if c in '0123456789.')})"


def collate(items: list[tuple[np.ndarray | EncodedFrame | None, Meta, float]]) -> Batch:
    ok = [j for j, (img, _, _) in enumerate(items) if isinstance(img, np.ndarray)]
    encoded = [(j, img) for j, (img, _, _) in enumerate(items) if isinstance(img, EncodedFrame)]
    images = None
    if ok:
        images = torch.from_numpy(np.stack([items[j][0] for j in ok]))[:, None]
    meta = [m for _, m, _ in items]
    return Batch(images, ok, meta, sum(s for _, _, s in items), encoded)


def worker_init(_: int) -> None:
    helper_started()  # dies with the scorer; Ctrl-C is the scorer's
    # One decode per process: the resize's numpy/BLAS calls must not spawn thread pools
    # that compete with the model for the cores (torch already runs 1 thread in workers).
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:
        pass


# ------------------------------------------------------------------------- the loader


@dataclass(frozen=True)
class LoaderSettings:
    """How the decoding workers run."""

    batch_size: int
    workers: int  # decoding processes; 0 decodes in the calling process
    prefetch_factor: int = 2  # batches each worker prepares ahead
    timeout: float = 600.0  # seconds a worker may take for a batch before it counts as dead
    pin: bool = False  # pin batches for asynchronous host→device copies (CUDA)


@dataclass
class CrashRows:
    """Ledger rows for the file(s) a dead decoding worker was decoding."""

    rows: list[list[str]] = field(default_factory=list)


def is_worker_failure(err: BaseException) -> bool:
    """True for the RuntimeError torch raises when a decoding worker died or timed out."""
    return isinstance(err, RuntimeError) and _WORKER_FAILURE.search(str(err)) is not None


class ResilientLoader:
    """The batches of the files `todo` (positions in `files.paths`), decoded in worker
    processes, and `CrashRows` where a worker died; its workers start (and prefetch) at once.

    A worker that dies raises a RuntimeError in the scoring process: from the loader's next
    batch, or (torch's SIGCHLD handler) from wherever the main thread is at that moment. The
    first kind is handled here; the caller hands the second to `recover` (or to `defer` when it
    is not iterating yet). Either way `settle()` runs first: it brings the ledger up to date
    (batches scored are committed, batches launched and not scored are dropped) and returns the
    paths the ledger holds. The files it lacks are decoded again by a new loader, except the
    one(s) the dead worker was decoding, which become CrashRows.
    """

    def __init__(
        self,
        files: Files,
        todo: Sequence[int],
        settings: LoaderSettings,
        settle: Callable[[], set[str]],
    ) -> None:
        self.files, self.settings, self.settle = files, settings, settle
        self.pending = list(todo)
        self.restarts = 0
        self._failure: RuntimeError | None = None
        self._it = self._start(self.pending)

    def __iter__(self) -> ResilientLoader:
        return self

    def __next__(self) -> Batch | CrashRows:
        if self._failure is not None:
            err, self._failure = self._failure, None
            return self.recover(err)
        try:
            return next(self._it)
        except RuntimeError as err:
            if not is_worker_failure(err):
                raise
            return self.recover(err)

    def defer(self, err: RuntimeError) -> None:
        """Remember a worker's death seen before the loop (while the model warmed up): the
        next item is its CrashRows. Any other error is raised again."""
        if not is_worker_failure(err):
            raise err
        self._failure = err

    def recover(self, err: RuntimeError) -> CrashRows:
        """After a decoding worker died: error rows for the file(s) it was decoding, and a new
        loader over the files still to score (any other error is raised again)."""
        if not is_worker_failure(err):
            raise err
        paths, state = self.files.paths, self.files.state
        done = self.settle()
        left = [i for i in self.pending if paths[i] not in done]
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
        for i in left:
            state[i] = 0
        blamed = set(culprits)
        self.pending = [i for i in left if i not in blamed]
        self._it = self._start(self.pending)
        self.restarts += 1
        return CrashRows([[paths[i], "", "", "", "", why] for i in culprits])

    def _start(self, indices: list[int]) -> Iterator[Batch]:
        if not indices:
            return iter(())
        s = self.settings
        dl = DataLoader(
            torch.utils.data.Subset(self.files, indices),
            batch_size=s.batch_size,
            shuffle=False,
            num_workers=s.workers,
            collate_fn=collate,
            pin_memory=s.pin,
            prefetch_factor=s.prefetch_factor if s.workers else None,
            # One pass over the files: workers live as long as the pass (a restart after a
            # crashed worker makes a new loader).
            persistent_workers=False,
            worker_init_fn=worker_init if s.workers else None,
            timeout=s.timeout if s.workers else 0,
            multiprocessing_context=start_method() if s.workers else None,
        )
        with clean_fork():  # the workers start here
            return iter(dl)
