"""The predictions ledger: the CSV a scoring run appends to, durable, resumable, one writer.

The CSV. `PredsCsv` appends rows batch by batch with one write each, flushed and fsync'd, so
the file is the record of what is done. `read_done` reads it back for `--resume`: the longest
prefix of complete rows is kept (a torn last line from a killed run is cut off and its file
scored again), and anything else that is not a six-field row is refused rather than dropped.

One writer. `LedgerLock(csv)` takes an exclusive advisory lock (`fcntl.flock`) on
`<csv>.lock` beside the CSV, before the CSV is read or written, and records who holds it
(pid, host, start time) as text. A second run on the same CSV is refused at once with one
line naming the holder, instead of both appending rows that silently replace each other. The
kernel drops a flock when its holder exits, however it exits (kill -9 included), so a lock
file left behind by a run that is gone never blocks; the file itself stays (removing it would
let two runs lock two different files of the same name). Forked children (decoding workers)
close their copy of the lock at once, so the lock lives exactly as long as the run.

Write failures. A full disk, a quota, a read-only or failing file system, or a folder that
vanished (`WRITE_ERRNOS`) are not problems of one input: they stop the run with one line,
`WriteFailed`, that names the file that could not be written and says that `--resume`
continues once it is fixed. Rows fsync'd before stay; a half-written row is cut off.
`append_whole` and `cut_back` are that rule for every append-only record of a run (this CSV,
`--send`'s `<out>.sent`).

Cells. Every value goes through `safe_text.to_cell` on the way in (control characters escaped,
a leading `'` on what a spreadsheet would evaluate) and `safe_text.from_cell` on the way out
(`decode_record`, used by resume, `read_rows` and `ptxfast report`), so a file name or
UID holding `=HYPERLINK(...)` or a CR is inert in a spreadsheet, keeps every record on one line,
and reads back exactly. One CSV, one lock: `--out` is resolved (`os.path.realpath`) before it is
locked, read or written, so every name of one file (a symlink, `a/../preds.csv`) shares one
lock. `--overwrite` replaces an empty file or a ptxfast predictions CSV, nothing else.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from ptxfast.errors import PtxfastError
from ptxfast.safe_text import from_cell, to_cell
from ptxfast.score import signals
from ptxfast.score.config import ScoreError

__all__ = [
    "CSV_COLUMNS", "CSV_HEADER", "WRITE_ERRNOS", "LedgerBusy", "LedgerError", "LedgerLock",
    "OutputsLost", "PredsCsv", "WriteFailed", "append_whole", "cut_back", "decode_record",
    "read_done", "read_rows", "rows_kept", "write_failed",
]  # fmt: skip

CSV_COLUMNS = ("path", "sop_instance_uid", "probability", "label", "mask_area", "error")
CSV_HEADER = ",".join(CSV_COLUMNS) + "\n"
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # any POSIX file name round-trips

# Errors that say the place being written to cannot take the bytes, not that an input is bad.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOENT})


_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    # A forked child sharing the descriptor would keep the flock after the run is gone.
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class LedgerError(PtxfastError):
    """A ledger that cannot be written as asked; the message says what to do."""


class LedgerBusy(LedgerError):
    """Another live process holds the ledger's lock."""


class WriteFailed(LedgerError):
    """A file of the run could not be written (disk full, read-only, I/O error, folder gone)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self):  # raised in an output-writing process, re-raised here
        return type(self), (str(self), self.path)


class OutputsLost(LedgerError):
    """A batch's output files were not written because what writes them died (an
    output-writing process killed, say for memory); its rows stay out of the CSV."""


def is_write_error(err: BaseException) -> bool:
    """True for an OSError that says the destination cannot be written (see WRITE_ERRNOS)."""
    return isinstance(err, OSError) and err.errno in WRITE_ERRNOS


def write_failed(path: str | os.PathLike, err: OSError) -> WriteFailed:
    """The one-line refusal for `err` while writing `path`."""
    code = errno.errorcode.get(err.errno or 0, "error")
    reason = err.strerror or str(err)
    return WriteFailed(
        f"cannot write {os.fspath(path)}: {reason} ({code}); the rows already in the CSV are "
        "kept: free space or fix the folder, then run the same command with --resume to continue",
        Path(path),
    )


def cut_back(file: BinaryIO, size: int) -> None:
    """Cut an append-only record to its first `size` bytes (its complete records: a torn last
    one goes) and write on from there."""
    file.truncate(size)
    file.seek(size)


def append_whole(file: BinaryIO, data: bytes, size: int, path: str | os.PathLike) -> None:
    """Write `data` whole after the `size` bytes of complete records of `file` (opened
    unbuffered, so a failed write leaves nothing queued to be retried at close), then fsync.
    On an error the file is cut back to `size` (shrinking needs no space), so no torn record
    stays; a write error (see WRITE_ERRNOS) raises `WriteFailed` naming `path`."""
    try:
        view = memoryview(data)
        while view:
            view = view[file.write(view) :]
        os.fsync(file.fileno())
    except OSError as err:
        with contextlib.suppress(OSError):
            cut_back(file, size)
        if is_write_error(err):
            raise write_failed(path, err) from None
        raise


class LedgerLock:
    """An exclusive lock on `<csv>.lock`, held from `acquire()` until `release()` or exit."""

    def __init__(self, csv_path: str | os.PathLike) -> None:
        # Every name of the file (a symlink, a relative path) locks the same lock file.
        self.csv = Path(os.path.realpath(csv_path))
        self.path = self.csv.with_name(self.csv.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> LedgerLock:
        """Take the lock or raise LedgerBusy naming its holder; OSError when it cannot be made."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LedgerBusy(
                f"{self.csv} is being written by another ptxfast run ({holder}); wait for it "
                "to finish (then --resume continues it), or give each run its own --out, "
                "e.g. --shard K/N --out preds-K.csv"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Who holds it, for the next run's refusal; best effort (a full disk still locks).
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        text = f"pid {os.getpid()}\nhost {socket.gethostname()}\nstarted {started}\n"
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
        self._fd = fd
        _HELD.add(fd)
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: see the module docstring)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _HELD.discard(fd)
            os.close(fd)  # closing the last descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> LedgerLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """'pid P on HOST, started T' from a lock file, or a plain phrase when it is unreadable."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        text = ""
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    if "pid" not in fields:
        return "its pid is not recorded yet"
    where = f" on {fields['host']}" if "host" in fields else ""
    when = f", started {fields['started']}" if "started" in fields else ""
    return f"pid {fields['pid']}{where}{when}"


# ------------------------------------------------------------------------------ the CSV


class _Counted:
    """Lines for csv.reader, counting the bytes handed out and whether the last had no end."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.consumed = 0
        self.torn = False

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self.consumed += len(line.encode(**ENCODING))
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
    text = data[len(header) :].decode(**ENCODING)
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
        done.add(from_cell(record[0]))
        good = len(header) + counted.consumed
    return done, good, good < len(data)


def decode_record(record: Sequence[str]) -> list[str]:
    """A record of the CSV as read by `csv.reader`, back to the values that were written."""
    return [from_cell(cell) for cell in record]


def read_rows(path: str | os.PathLike) -> Iterator[list[str]]:
    """The complete rows of a predictions CSV (header skipped), as the values written: what the
    summary counts and `--send` sends. A record that is not six fields (a torn last line) is
    left out; `read_done` is the check that refuses a malformed file."""
    with open(path, newline="", **ENCODING) as f:
        reader = csv.reader(f)
        next(reader, None)
        for record in reader:
            if len(record) == len(CSV_COLUMNS):
                yield decode_record(record)  # the values written, not their CSV-safe cells


def rows_kept(path: str | os.PathLike) -> int:
    """How many files have a row in the CSV at `path` (0 when there is none to read)."""
    try:
        return len(read_done(Path(path))[0])
    except (OSError, ScoreError):
        return 0


def _is_ledger(path: Path) -> bool:
    """True for a ptxfast predictions CSV (its header, or the start of it) or an empty file."""
    with open(path, "rb") as f:
        head = f.read(len(CSV_HEADER))
    return CSV_HEADER.encode().startswith(head)  # head is at most the header's length


def _check_out(path: Path, given: Path, overwrite: bool) -> None:
    """Refuse an `--out` that is not a regular file, or one `--overwrite` must not replace."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise ScoreError(f"--out {given} is a folder; give a file name such as preds.csv")
    if not stat.S_ISREG(st.st_mode):
        raise ScoreError(f"--out {given} is not a regular file; give a file name such as preds.csv")
    if overwrite and st.st_size and not _is_ledger(path):
        raise ScoreError(
            f"--overwrite: {given} is not a ptxfast predictions CSV (its first line is not "
            f"{CSV_HEADER.strip()!r}), so it is not replaced; choose another --out"
        )


class PredsCsv:
    """The predictions file: locked for this run alone, checked (and, on resume, read) first,
    then opened for appending batch by batch with fsync. Nothing in an existing file changes
    before `open()`; a write that fails cuts the file back to its complete rows and raises
    `WriteFailed`."""

    def __init__(self, path: Path, resume: bool, overwrite: bool) -> None:
        given = Path(path)
        # The file itself, whatever name it was given by: the lock, the reads and the writes
        # all follow a symlinked --out to one file.
        self.path = path = Path(os.path.realpath(given))
        self.done: set[str] = set()
        self.torn = False
        self.good = 0  # bytes of complete rows to keep (resume); 0 starts a new file
        self.lock = LedgerLock(path)
        # Called with each batch of rows once they are durable (DICOMweb spool, --send).
        self.listeners: list[Callable[[Sequence[Sequence[str]]], None]] = []
        try:
            _check_out(path, given, overwrite)
        except OSError as err:
            raise ScoreError(f"cannot write --out {given}: {err.strerror or err}") from None
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
        with signals.deferred():
            if good:
                cut_back(self.file, good)  # drop a torn last line; its file is scored again
                self._write(b"")
            else:
                self._write(CSV_HEADER.encode())
                _fsync_dir(self.path.parent)  # the new name survives a power cut too

    def _write(self, data: bytes) -> None:
        """Write `data` whole and fsync; on a write error cut back to the complete rows."""
        append_whole(self.file, data, self.size, self.path)
        self.size += len(data)

    def append(self, rows: Sequence[Sequence[str]]) -> None:
        """Write rows with one write call, then fsync; each value through `to_cell`."""
        if not rows:
            return
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([to_cell(v) for v in r] for r in rows)
        with signals.deferred():  # a stop waits for the batch's rows to be whole on disk
            self._write(buf.getvalue().encode(**ENCODING))
        for listener in self.listeners:
            listener(rows)

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
