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
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import sys
from collections.abc import Iterator

__all__ = ["clean_fork", "start_method"]


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
