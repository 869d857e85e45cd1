"""How scoring starts its helper processes (decoding workers, output writers), in one place.

Forked, the usual way on Linux (instant, nothing re-imported, no `if __name__ == "__main__"`
needed in a caller's script), or from a forkserver once this process has loaded gRPC (Ray's
client, after `--engine ray` in the same Python session): gRPC's native threads outlive
`ray.shutdown`, and a fork taken while one holds a lock can hang the child.

Every fork goes through `clean_fork`: a child must never run the finaliser of an object it
inherited. Garbage of an earlier run in the same process (a predictor whose ONNX Runtime or
OpenVINO session sits in a reference cycle) would otherwise be collected in the child, whose
copy of the session has lost its threads: the destructor waits on them forever. Seen as a
decoding worker hung in `pthread_cond_destroy` under ONNX Runtime's destructor, in the third
of several `score_folder` calls of one process.

Every helper calls `helper_started` first: it dies with the process that forked it, whatever
kills that one (kill -9 included: Linux's parent-death signal, `prctl(PR_SET_PDEATHSIG)`), and
it leaves Ctrl-C to the scorer, which stops the run between batches and ends its helpers itself
(`ptxfast.score.signals`). A decoding worker gets SIGKILL (it may sit in a codec's C code,
where no Python handler runs); an output writer gets SIGTERM, removes the temporary file of a
write in progress (`files.remove_partial_files`) and exits, so no `.<name>.<pid>.tmp` is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator

from ptxfast.files import remove_partial_files

__all__ = ["clean_fork", "helper_started", "start_method"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_forked_by = 0  # in a forked child: the pid of the process that forked it (0: not known)


def _note_forker() -> None:
    global _forked_by
    _forked_by = os.getpid()


os.register_at_fork(before=_note_forker)


def start_method() -> str | None:
    """None (the platform's default: fork on Linux), or "forkserver" once gRPC is loaded."""
    if "grpc" in sys.modules and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return None


@contextlib.contextmanager
def clean_fork() -> Iterator[None]:
    """Around code that forks: the garbage is collected first (its finalisers run here) and
    what is left is frozen, so no collection in a child finalises an object of this process."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def helper_started(writes_files: bool = False) -> None:
    """The first call in a helper process of a scoring run (decoding worker, output writer):
    Ctrl-C is the scorer's to handle, and the helper dies with the process that forked it.

    `writes_files`: on SIGTERM (also its parent-death signal) the helper removes the temporary
    file of the write in progress and exits 143; otherwise the parent-death signal is SIGKILL.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if writes_files:
        signal.signal(signal.SIGTERM, _exit_cleanly)
    else:  # a handler inherited from the scorer (`signals.stop_on_signals`) is not ours
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        death = signal.SIGTERM if writes_files else signal.SIGKILL
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(death), 0, 0, 0)
    # The parent may have died before the signal was asked for: the child has a new parent.
    if _forked_by and os.getppid() != _forked_by:
        _exit_cleanly()


def _exit_cleanly(*_) -> None:
    remove_partial_files()
    os._exit(128 + signal.SIGTERM)
