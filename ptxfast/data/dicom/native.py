"""The fast path for grayscale DICOM frames: stored values to [0, 1] in one affine map.

Grayscale files (the common case when scoring a folder or training) skip pydicom's float64 LUT
passes: uncompressed little-endian pixels are read straight from their file offset into a
scratch array, compressed frames are decoded to stored values by the fastest codec for their
syntax (`codecs.decode_stored`; pydicom's decoders for the rest), and rescale + window +
MONOCHROME1 inversion are folded into one map image = clip(a * s + b, 0, 1). The pixels are the
full path's (`pixels.decode_full`, the tests compare them), except that a windowed JPEG, JPEG
2000 or HTJ2K frame read for a much smaller size is decoded at a reduced resolution
(`codecs.decode_reduced`, within 0.2% at the 99th percentile on phantoms). An integer-factor shrink is
done on integers (`_native_block_mean`); anything the path does not cover returns None and
falls back to the full path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from ptxfast.data.dicom import codecs
from ptxfast.data.dicom.info import read_error
from ptxfast.data.dicom.limits import NATIVE_SYNTAXES
from ptxfast.data.dicom.tags import PIXEL_DATA, float_tag, int_tag, peek, text_tag, window_of
from ptxfast.data.resize import block_sum, resize
from ptxfast.data.scratch import scratch

__all__ = ["EncodedFrame", "HandOverRule", "decode_fast", "encoded_frame", "finish_stored"]

_GRAY = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class _Rules:
    """What the header says about turning a grayscale frame's stored values into [0, 1]."""

    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    slope: float
    intercept: float
    window: tuple[float, float] | None  # (center, width) as a LINEAR_EXACT window

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(f"<{'i' if self.signed else 'u'}{self.bits_allocated // 8}")

    @property
    def stored_range(self) -> tuple[int, int]:
        """The values `bits_stored` bits can hold."""
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1


@dataclass(frozen=True)
class _Map:
    """image = clip(a * s + b, 0, 1) on stored values s within `bounds` (clipping to them
    changes nothing); `flat` is the one value of every pixel when the window lies wholly
    beyond the data, else None."""

    a: float
    b: float
    bounds: tuple[float, float]
    flat: float | None = None


def decode_fast(
    f: BinaryIO,
    ds: Dataset,
    path: Path,
    rows: int,
    columns: int,
    size: int | None,
    frame: bytes | None,
) -> np.ndarray | None:
    """The fast path for grayscale frames; None when it does not apply.

    Same arithmetic as `decode_full` (pydicom's rescale, LINEAR/LINEAR_EXACT window,
    min/max otherwise, MONOCHROME1 inversion), folded into one map of the stored values s,
    image = clip(a * s + b, 0, 1), followed by `resize` when `size` is given. Uncompressed
    little-endian pixels are read straight from the file; compressed frames are decoded to
    stored values by `codecs` (at a reduced resolution when shrinking a lot) or pydicom, and
    then take the same map, which spares the float64 passes of pydicom's LUT functions.
    `frame`: the first compressed frame, already pulled out (`limits.first_frame`) for a
    syntax `codecs` decodes; None otherwise.
    """
    rules = _rules(ds)
    if rules is None:
        return None
    stored = _stored_values(f, ds, path, rules, rows, columns, size, frame)
    rows, columns = stored.shape
    reduced = stored.dtype.kind == "f"  # a wavelet level: float, within the stored range
    m = _affine_map(rules, stored)
    if m.flat is not None:
        shape = (rows, columns) if size is None else (size, size)
        return np.full(shape, m.flat, dtype=np.float32)
    # An axis the size divides is shrunk on integers (a 2500x2048 frame to 512: the columns),
    # so only the shrunk image is converted to float32 for the rest of the resize.
    fy = rows // size if size is not None and rows % size == 0 else 1
    fx = columns // size if size is not None and columns % size == 0 else 1
    if size is not None and not reduced and fy * fx > 1:
        grid = _integer_grid(m.bounds)
        # An odd width's doubled values can overflow the stored dtype. 8-bit values then widen
        # to 16 bits; 16-bit ones would need 32 (2.5 MB of frame becomes 20) and take the float
        # path, which is faster there (2500x2048 to 512, 16 bits stored: 4.9 against 8.6 ms; at
        # 12 bits the integer path is, 4.2 against 5.3 ms).
        widen = grid == 2 and rules.bits_stored >= 8 * stored.dtype.itemsize - rules.signed
        if grid is not None and not (widen and stored.dtype.itemsize > 1):
            return _native_block_mean(
                stored, rules.bits_stored, m.a, m.b, m.bounds, grid, widen, fy, fx, size
            )
    return _native_float(stored, m.a, m.b, m.bounds, size)


def _rules(ds: Dataset) -> _Rules | None:
    """The header's pixel rules when the fast path covers them, else None."""
    photometric = peek(ds, "PhotometricInterpretation")
    if int_tag(ds, "SamplesPerPixel") not in (None, 1) or photometric not in _GRAY:
        return None
    if "ModalityLUTSequence" in ds or "VOILUTSequence" in ds:
        return None  # true lookup tables: pydicom's functions handle them
    bits_allocated = int_tag(ds, "BitsAllocated")
    bits_stored = int_tag(ds, "BitsStored") or bits_allocated
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        return None
    slope, intercept = 1.0, 0.0
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float_tag(ds, "RescaleSlope"), float_tag(ds, "RescaleIntercept")
    window = window_of(ds)
    if window is not None:
        center, width, function = window
        if function == "LINEAR":
            center, width = center - 0.5, width - 1.0
        elif function != "LINEAR_EXACT":
            return None  # SIGMOID or unknown: the full path
        if width <= 0 or slope == 0:
            return None  # degenerate window (a step or an error): the full path decides
        window = (center, width)
    signed = int_tag(ds, "PixelRepresentation") == 1
    return _Rules(photometric, bits_allocated, bits_stored, signed, slope, intercept, window)


def _stored_values(
    f: BinaryIO,
    ds: Dataset,
    path: Path,
    rules: _Rules,
    rows: int,
    columns: int,
    size: int | None,
    frame: bytes | None,
) -> np.ndarray:
    """The first frame's stored values, the unused high bits cleared (sign-extended)."""
    tsyntax = text_tag(ds.file_meta, "TransferSyntaxUID")
    if tsyntax in NATIVE_SYNTAXES:
        stored = _read_native_frame(f, ds, path, rules.dtype, rows, columns)
    else:
        stored = None
        if frame is not None:  # pulled out only for a syntax `codecs` decodes
            # Reduced only under a window: min/max normalisation needs the full-resolution
            # extremes, which a coarse read smooths away.
            if size is not None and rules.window is not None and not rules.signed:
                stored = codecs.decode_reduced(
                    frame, tsyntax, rows, columns, rules.bits_stored, size
                )
            if stored is None:
                stored = codecs.decode_stored(frame, tsyntax, rows, columns, rules.dtype)
        if stored is None:
            stored = _decoded_frame(ds, rules.dtype)
    if stored.dtype.kind == "f":
        return stored  # a wavelet level holds the stored values already
    shift = rules.bits_allocated - rules.bits_stored
    if shift and rules.signed:
        # Ignore the unused high bits, sign-extending, as pydicom does.
        np.left_shift(stored, shift, out=stored)
        np.right_shift(stored, shift, out=stored)
    elif shift:
        np.bitwise_and(stored, (1 << rules.bits_stored) - 1, out=stored)
    return stored


def _affine_map(rules: _Rules, stored: np.ndarray | None) -> _Map:
    """The map of `stored` to [0, 1]: the window's (`stored` unused), else the frame's min/max."""
    if rules.window is not None:
        center, width = rules.window
        a = rules.slope / width
        b = (rules.intercept - center) / width + 0.5
    else:
        low, high = int(stored.min()), int(stored.max())
        if low == high or rules.slope == 0:
            a, b = 0.0, 0.0  # a flat frame: min/max normalisation gives zeros
        elif rules.slope > 0:
            a, b = 1.0 / (high - low), -low / (high - low)
        else:
            a, b = -1.0 / (high - low), high / (high - low)
    if rules.photometric == "MONOCHROME1":
        a, b = -a, 1.0 - b
    if rules.window is None:
        # Clipping to the data's own range changes nothing, and its low end is where the
        # float32 arithmetic below is shifted to stay exact.
        return _Map(a, b, (float(low), float(high)))
    # The stored values that map into [0, 1], limited to those the data can hold (which
    # changes nothing and keeps every later number within the stored range).
    low_s, high_s = sorted(((0.0 - b) / a, (1.0 - b) / a))
    s_min, s_max = rules.stored_range
    bounds = (max(low_s, s_min), min(high_s, s_max))
    if low_s > s_max or high_s < s_min:
        # The whole window lies beyond the data: one clipped value everywhere.
        flat = float(np.clip(a * (low_s if low_s > s_max else high_s) + b, 0.0, 1.0))
        return _Map(a, b, bounds, flat)
    return _Map(a, b, bounds)


def _integer_grid(bounds: tuple[float, float]) -> int | None:
    """k in (1, 2) such that k * bounds are integers, so k * s can be clipped exactly as
    integers; None if there is none. Integer window center/width give k = 1 (even width)
    or k = 2 (odd width), which covers nearly every real file."""
    for k in (1, 2):
        if all(abs(k * v - round(k * v)) < 1e-9 for v in bounds):
            return k
    return None


def _native_block_mean(
    stored: np.ndarray,
    bits_stored: int,
    a: float,
    b: float,
    bounds: tuple[float, float],
    k: int,
    widen: bool,
    fy: int,
    fx: int,
    size: int,
) -> np.ndarray:
    """Integer-factor resize done on integers: clip k * s to the window (exact, since the
    bounds sit on the 1/k grid), sum fy x fx blocks, area-resize what is left to size x size
    when an axis is not a multiple of it (linear, so it commutes with the map), then map the
    small image. `widen`: 2 * s would overflow the (8-bit) stored dtype, so the values are
    widened to 16 bits and doubled in one pass."""
    v = stored
    shape = (v.shape[0] // fy, v.shape[1] // fx)
    if widen:
        v = np.multiply(v, 2, dtype=np.dtype(f"{v.dtype.kind}2"))
    elif k == 2:
        np.left_shift(v, 1, out=v)
    ref, high = (round(k * x) for x in bounds)
    np.clip(v, ref, high, out=v)
    n = k * fy * fx
    # Sum in the stored dtype when the block sums fit (12-bit data, 2x2 blocks: half the
    # memory traffic of int32), else in int32/int64.
    span = n * 2 ** (bits_stored - (stored.dtype.kind == "i"))
    limit = 2 ** (8 * v.dtype.itemsize - (v.dtype.kind == "i"))
    dtype = v.dtype if span <= limit else np.int32 if span <= 2**31 else np.int64
    acc = block_sum(v, fy, fx, scratch("sums", shape, dtype))
    img = np.empty(shape, np.float32)
    np.copyto(img, acc, casting="unsafe")
    if shape != (size, size):
        img = resize(img, size)
    # Subtracting the low bound keeps the values small, so the float32 map below stays
    # exact to rounding even for a narrow window far from 0; mean(s) = sum / n.
    img -= np.float32(fy * fx * ref)
    img *= np.float32(a / n)
    img += np.float32(a * ref / k + b)
    return np.clip(img, 0.0, 1.0, out=img)


def _native_float(
    stored: np.ndarray, a: float, b: float, bounds: tuple[float, float], size: int | None
) -> np.ndarray:
    """The general case in float32: frame = s - ref clipped to the window, then `resize`
    (linear, weights summing to 1, so it commutes with the map), then
    a * frame + (a * ref + b) on the (smaller) result."""
    frame = (
        np.empty(stored.shape, np.float32)
        if size is None
        else scratch("frame", stored.shape, np.float32)
    )
    np.copyto(frame, stored, casting="unsafe")  # integers below 2^24: exact in float32
    ref = 0
    if abs(a) * max(abs(bounds[0]), abs(bounds[1])) > 4.0:
        # A narrow window far from 0: terms of a * s + b would be large and cancel, so
        # shift by an integer near the low bound, keeping the clipped values within
        # [0, window width] where float32 stays exact to rounding. (A wide window needs
        # no shift: rounding stays below ~3e-7, and the pass is saved.)
        ref = round(bounds[0])
        frame -= np.float32(ref)
    np.clip(frame, np.float32(bounds[0] - ref), np.float32(bounds[1] - ref), out=frame)
    img = frame if size is None else resize(frame, size)
    if size is not None and img is frame:
        img = img.copy()  # `frame` is a reused buffer
    img *= np.float32(a)
    img += np.float32(a * ref + b)
    return np.clip(img, 0.0, 1.0, out=img)


def _read_native_frame(
    f: BinaryIO, ds: Dataset, path: Path, dtype: np.dtype, rows: int, columns: int
) -> np.ndarray:
    """The first frame's stored values (a scratch array), read from the file offset
    pydicom recorded."""
    stored = scratch("stored", (rows, columns), dtype)
    nbytes = stored.nbytes
    elem = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if isinstance(elem, RawDataElement) and elem.value is None:
        f.seek(elem.value_tell)
        got = f.readinto(memoryview(stored.reshape(-1)).cast("B"))
    else:
        value = elem.value if isinstance(elem, RawDataElement) else ds.PixelData
        got = min(len(value), nbytes)
        stored.reshape(-1)[: got // dtype.itemsize] = np.frombuffer(
            value, dtype=dtype, count=got // dtype.itemsize
        )
    if got < nbytes:
        raise read_error(path, f"truncated pixel data: {got} of {nbytes} bytes present")
    return stored


def _decoded_frame(ds: Dataset, dtype: np.dtype) -> np.ndarray:
    """The first frame's stored values from a compressed (or big-endian, deflated) syntax,
    decoded by pydicom, as a writable array of `dtype`."""
    stored = pixel_array(ds, index=0)
    if stored.ndim != 2:
        raise ValueError(f"expected one grayscale frame, decoded shape {stored.shape}")
    if stored.dtype != dtype or not stored.flags.writeable:
        stored = stored.astype(dtype)
    return stored


@dataclass(frozen=True)
class EncodedFrame:
    """A windowed grayscale frame handed over still compressed (for a GPU decoder), with the
    map that turns its stored values s into the model's input: clip(a * s + b, 0, 1), s
    clipped to `bounds` first and its bits above `bits_stored` ignored."""

    frame: bytes
    tsyntax: str
    rows: int
    columns: int
    bits_stored: int
    a: float
    b: float
    bounds: tuple[float, float]


HandOverRule = Callable[[str, int], bool]
"""(transfer syntax, bits stored) -> whether such a frame is handed over still compressed."""


def encoded_frame(
    ds: Dataset, rows: int, columns: int, frame: bytes | None, hand_over: HandOverRule | None
) -> EncodedFrame | None:
    """The first frame of `ds` (`frame`, already pulled out) still compressed, when
    `hand_over` takes its (transfer syntax, bits stored) and the fast path's rules cover it
    under a window (min/max normalisation needs the decoded pixels); None otherwise (the
    caller decodes it here)."""
    if frame is None or hand_over is None:
        return None
    rules = _rules(ds)
    if rules is None or rules.window is None or rules.signed:
        return None
    tsyntax = text_tag(ds.file_meta, "TransferSyntaxUID")
    if not hand_over(tsyntax, rules.bits_stored):
        return None
    m = _affine_map(rules, None)  # a window needs no stored values
    if m.flat is not None:
        return None  # one value everywhere: nothing to decode for
    return EncodedFrame(frame, tsyntax, rows, columns, rules.bits_stored, m.a, m.b, m.bounds)


def finish_stored(stored: np.ndarray, ef: EncodedFrame, size: int | None) -> np.ndarray:
    """An `EncodedFrame`'s stored values, decoded elsewhere (unsigned, `rows` x `columns`),
    to the model's input: the same map and resize as `decode_fast` (the CPU reference a GPU
    decode is compared with, and its fallback)."""
    stored = np.bitwise_and(stored, (1 << ef.bits_stored) - 1, dtype=stored.dtype)
    return _native_float(stored, ef.a, ef.b, ef.bounds, size)
