"""What pydicom and highdicom say about a file's header while its outputs are written: counted,
never printed.

Both libraries quote header values in their warnings (`warnings.warn`) and log records (the
"pydicom" and "highdicom" loggers, which reach stderr through logging's last resort when the
application configured none). highdicom's check of a person name without `^` prints the
patient's name: `The string "SMITH JOHN" is unlikely to represent the intended person name...`.
Batch logs end up where patient data must not. So a thread that writes a file's SEG or SR does
it inside `captured()`: every warning and every log record of those libraries raised by that
thread is counted in its `Tally` and dropped, and the summary says how many there were. Other
threads, and the same thread outside the block, warn and log as before, except that a warning
of the two libraries is shown each time, not only the first time at its place: a process that
captures warns "always" for their modules (`install`), as a repeat in a block must be counted
however the process writes, in threads or in processes of its own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["LOGGERS", "Tally", "captured", "install"]

LOGGERS = ("pydicom", "highdicom")
# The modules the libraries' warnings are raised from: each of them is shown, so counted, every
# time, not only the first time at a place as Python's default filter does.
_MODULES = r"(pydicom|highdicom)(\.|$)"

_local = threading.local()
_lock = threading.Lock()
_previous_show = None


@dataclass
class Tally:
    """Messages caught in one `captured()` block."""

    messages: int = 0


def _tally() -> Tally | None:
    return getattr(_local, "tally", None)


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    tally = _tally()
    if tally is not None:
        tally.messages += 1
        return
    _previous_show(message, category, filename, lineno, file, line)


class _Forward(logging.Handler):
    """Drops a library's record in a capturing thread (counting highdicom's: pydicom logs
    each of its warnings as a record too); elsewhere hands it on as propagation would have:
    to the root's handlers, or to logging's last resort when no handler at all was found."""

    def __init__(self, library: str) -> None:
        super().__init__()
        self.library = library

    def emit(self, record: logging.LogRecord) -> None:
        tally = _tally()
        if tally is not None:
            if self.library != "pydicom":
                tally.messages += record.levelno >= logging.WARNING
            return
        root = logging.getLogger()
        if root.handlers:
            root.callHandlers(record)
        elif len(logging.getLogger(self.library).handlers) == 1:  # ours alone (no NullHandler)
            last = logging.lastResort
            if last is not None and record.levelno >= last.level:
                last.handle(record)


def install() -> None:
    """Route this process's warnings and the two libraries' log records through the capture,
    and show every warning of the two libraries, not only a place's first (once; before any
    thread captures)."""
    global _previous_show
    with _lock:
        # Checked each time: a `warnings.catch_warnings` block that began earlier restores the
        # hook it saved when it ends.
        if warnings.showwarning is not _show:
            _previous_show = warnings.showwarning
            warnings.showwarning = _show
        # Added once: adding a filter again would make every module's registry forget which
        # warnings it already showed.
        if not any(
            f[0] == "always" and f[3] and f[3].pattern == _MODULES for f in warnings.filters
        ):
            warnings.filterwarnings("always", module=_MODULES)
        for name in LOGGERS:
            log = logging.getLogger(name)
            if not any(isinstance(h, _Forward) for h in log.handlers):
                log.addHandler(_Forward(name))
            log.propagate = False  # _Forward hands on what is not captured


@contextlib.contextmanager
def captured() -> Iterator[Tally]:
    """Count and drop the warnings and library log records this thread raises in the block."""
    install()
    outer = _tally()
    _local.tally = tally = Tally()
    try:
        yield tally
    finally:
        _local.tally = outer
