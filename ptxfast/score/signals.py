"""Stopping a scoring run by a signal, with the ledger whole and nothing left running.

SIGTERM (`kill PID`, a batch scheduler's time limit, a supervisor) and SIGINT (Ctrl-C) reach the
scorer as `Stopped`, raised in its main thread once `stop_on_signals` is in force. It unwinds
the run like an error would: a batch whose rows are being written is finished first (a ledger
write is `deferred`, so the stop waits for its fsync), a batch still in the model or waiting for
its outputs is dropped whole (its rows are not in the CSV, so `--resume` scores it again), the
output writers finish the file in hand and stop (queued outputs are cancelled), and the ledger's
lock is released. `ptxfast score` then prints one line, "stopped by SIGTERM; N rows kept;
--resume continues", and exits 128 + the signal (143, 130).

`Stopped` is a BaseException, like KeyboardInterrupt, so no `except Exception` on the way (in
the scorer or in a library) swallows it. A second signal while stopping is ignored: the stop is
already under way and takes well under a second. Helper processes ignore SIGINT (a terminal's
Ctrl-C reaches the whole process group) and die with the scorer (`processes.helper_started`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["STOP_SIGNALS", "Stopped", "deferred", "stop_on_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """The run was stopped by a signal; `exit_code` is the shell's 128 + its number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {self.name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    """The signal being acted on, and how deep the main thread is in `deferred` blocks."""

    active = False  # stop_on_signals is in force
    pending: int | None = None  # a signal that arrived inside a deferred block
    stopping = False  # Stopped has been raised; further signals are ignored
    depth = 0


_state = _State()


def _handler(signum: int, frame) -> None:
    if _state.stopping or _state.pending is not None:
        return
    if _state.depth:
        _state.pending = signum  # raised when the block ends
        return
    _raise(signum)


def _child_exited(signum: int, frame) -> None:
    """SIGCHLD while stopping: nothing to do (the helpers are being stopped)."""


def _raise(signum: int) -> None:
    _state.stopping = True
    # From here a helper process that exits is expected: torch's SIGCHLD check would turn it
    # into "DataLoader worker ... killed" in the middle of the stop. The check is replaced by a
    # handler that does nothing, not by SIG_DFL: a SIGTERM sent to the whole process group
    # kills the helpers too, and a SIGCHLD that arrived before this line but is handled after
    # it would otherwise raise "OSError: Signal 17 ignored due to race condition" wherever the
    # stop had got to.
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGCHLD, _child_exited)
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Stopped` in the main thread while the block runs (a no-op
    outside the main thread, where signal handlers cannot be installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    _state.active, _state.pending, _state.stopping, _state.depth = True, None, False, 0
    for s in STOP_SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, old in before.items():
            signal.signal(s, old)
        _state.active = False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block a stop must not cut in two (a ledger write and its fsync): a signal arriving
    inside it raises `Stopped` when it ends. Only the main thread, where handlers run, defers."""
    if not _state.active or threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _state.pending is not None and not _state.stopping:
            _raise(_state.pending)
