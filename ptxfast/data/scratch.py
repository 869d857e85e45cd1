"""Per-thread scratch arrays for the decode and resize hot paths.

Fresh multi-MiB arrays cost page faults (and huge-page zeroing) on every image, a sizeable share
of the fast DICOM path; `scratch` hands back a reused array of the asked shape instead. Buffers
above `_SCRATCH_MAX_BYTES` are not kept, so a rare huge image does not pin memory. What it
returns is overwritten by the next call with the same name on the same thread.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["scratch"]

_SCRATCH = threading.local()
_SCRATCH_MAX_BYTES = 32 * 2**20


def scratch(name: str, shape: tuple[int, int], dtype: type) -> np.ndarray:
    """A per-thread scratch array of `shape` and `dtype`, reused under `name` (see the module
    docstring); a fresh array above `_SCRATCH_MAX_BYTES`."""
    dtype = np.dtype(dtype)
    size = shape[0] * shape[1]
    if size * dtype.itemsize > _SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype)
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = buffers.get((name, dtype.str))
    if buf is None or buf.size < size:
        buf = buffers[(name, dtype.str)] = np.empty(size, dtype)
    return buf[:size].reshape(shape)
