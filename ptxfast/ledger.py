"""Guards of a predictions ledger (the CSV a scoring run appends to): one writer, clear failures.

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
continues once it is fixed. Rows fsync'd before stay; the caller cuts what it had half written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

__all__ = ["WRITE_ERRNOS", "LedgerBusy", "LedgerError", "LedgerLock", "WriteFailed", "write_failed"]

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


class LedgerError(ValueError):
    """A ledger that cannot be written as asked; the message says what to do."""


class LedgerBusy(LedgerError):
    """Another live process holds the ledger's lock."""


class WriteFailed(LedgerError):
    """A file of the run could not be written (disk full, read-only, I/O error, folder gone)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


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


class LedgerLock:
    """An exclusive lock on `<csv>.lock`, held from `acquire()` until `release()` or exit."""

    def __init__(self, csv_path: str | os.PathLike) -> None:
        self.csv = Path(csv_path)
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
