"""The fastest well-kept codec for each compressed transfer syntax, and reduced-resolution reads.

pydicom decodes compressed frames through its plugins (pylibjpeg-libjpeg for JPEG and JPEG-LS,
pylibjpeg-openjpeg for JPEG 2000 and HTJ2K), 3-26x slower on a 2500x2048 12-bit radiograph
than the same standards' best implementations on the same core. This module calls those
directly, chosen by measurement on one core (`bench/decode_bench.py`):

| syntax | codec | via |
|---|---|---|
| JPEG baseline, extended (8/12-bit) | libjpeg-turbo 3 | imagecodecs `jpeg8_decode` |
| JPEG lossless (process 14, SV1) | libjpeg-turbo 3 (2x its `ljpeg`) | imagecodecs `jpeg8_decode` |
| JPEG-LS lossless, near-lossless | CharLS | imagecodecs `jpegls_decode` |
| JPEG 2000 | OpenJPEG | pylibjpeg-openjpeg `decode` (imagecodecs' is the same library) |
| HTJ2K (all three) | OpenJPH | imagecodecs `htj2k_decode` |
| RLE lossless | PackBits (imagecodecs) | `packbits_decode` per segment (1.5x pylibjpeg-rle) |

`decode_stored` returns None for whatever it does not cover or a frame a codec will not take
(signed data, a precision the bits allocated cannot hold, a decoded shape other than the
header's); the caller then decodes with pydicom, which stays the reference. The codec's own
header (SOF, SOF55, SIZ) has already been checked against the DICOM header by
`limits.check_codec_size` before any of this runs.

`decode_reduced` reads only what a much smaller output needs: JPEG frames of 8-bit precision
with DCT-domain scaling (1/2, 1/4, 1/8: libjpeg-turbo's TurboJPEG API through simplejpeg, one
call from memory, 7% faster than Pillow's `draft` on the same library; no maintained binding
here scales 12-bit frames, see the README), JPEG 2000 and HTJ2K at a coarser wavelet
level (OpenJPEG through Pillow's `reduce`, OpenJPH's `skipres`). A scaled IDCT sample is its
sub-block's mean, rounded, so it sits on the area-resize grid already; a wavelet low-pass
sample sits on the block's first pixel and is shifted onto that grid (`_onto_area_grid`).
Both stay within the bound the tests hold them to against full decode + area resize.
"""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Callable

import imagecodecs
import numpy as np
import openjpeg
import simplejpeg
from PIL import Image
from pydicom import uid

from ptxfast.data.dicom.limits import (
    HTJ2K,
    J2K,
    JPEG_DCT,
    JPEG_LOSSLESS,
    JPEG_LS,
    jpeg_frame_header,
)
from ptxfast.data.scratch import scratch

__all__ = [
    "FAST_SYNTAXES",
    "decode_reduced",
    "decode_stored",
    "encode_frame",
]


# A reduced wavelet decode keeps >= 2x the output size a side, at most 2 levels down: the
# wavelet's low-pass is not an area mean, and the difference grows with depth.
_WAVELET_MARGIN = 2
_WAVELET_MAX_LEVEL = 2
# A scaled IDCT sample is the mean of its sub-block's unclamped values, rounded (on the bench
# radiograph within 0.75 of a code value of the full decode's block mean, 0.25 on average).
# The full decode clamps each pixel to the sample range first, which moves edge blocks, and
# rounding one sample per output pixel is not averaged away: at 1/2 and 1/4 on the test
# phantoms, 1x the output size was off by up to 0.03, over the tests' bound of 0.02, so those
# keep the wavelet's margin; a 1/8 sample (the DC) averages 64 pixels and may go down to it.
_DCT_MAX_LEVEL = 3


# Each codec takes (frame, rows, columns, dtype); only RLE, which has no header of its own,
# needs the DICOM header's.
def _jpeg(frame: bytes, *_) -> np.ndarray:
    return imagecodecs.jpeg8_decode(frame)


def _jpegls(frame: bytes, *_) -> np.ndarray:
    return imagecodecs.jpegls_decode(frame)


def _j2k(frame: bytes, *_) -> np.ndarray:
    return openjpeg.decode(frame)


def _htj2k(frame: bytes, *_) -> np.ndarray:
    return imagecodecs.htj2k_decode(frame)


def _rle(frame: bytes, rows: int, columns: int, dtype: np.dtype) -> np.ndarray:
    """DICOM RLE (PS3.5 annex G): a header of 16 little-endian words (the number of segments,
    then their offsets), one PackBits segment per byte of a sample, most significant first.
    Each segment is decoded by imagecodecs' PackBits into a buffer of exactly one byte plane,
    so a segment that would decode to more is refused; a grayscale frame of `dtype` has
    `dtype.itemsize` segments. 1.5x pylibjpeg-rle's decode on a 2500x2048 frame."""
    n = rows * columns
    planes = dtype.itemsize
    header = np.frombuffer(frame, "<u4", count=16)
    ends = [*header[1 : planes + 1].tolist(), len(frame)]
    if header[0] != planes or ends[0] != 64 or any(a >= b for a, b in itertools.pairwise(ends)):
        raise ValueError(f"RLE header: {header[0]} segments at {ends[:-1]}")
    view = memoryview(frame)
    decoded = []
    for i in range(planes):
        # One plane is the result; two are combined, from reused buffers.
        plane = np.empty(n, np.uint8) if planes == 1 else scratch(f"rle{i}", (1, n), np.uint8)[0]
        got = imagecodecs.packbits_decode(view[ends[i] : ends[i + 1]], out=plane)
        if len(got) != n:
            raise ValueError(f"RLE segment {i}: {len(got)} of {n} bytes")
        decoded.append(plane)
    if planes == 1:
        return decoded[0].reshape(rows, columns)
    out = np.left_shift(decoded[0], 8, dtype=dtype)
    np.bitwise_or(out, decoded[1], out=out)
    return out.reshape(rows, columns)


# The codec of each syntax (the module docstring's table).
_FULL: dict[str, Callable[[bytes, int, int, np.dtype], np.ndarray]] = {
    **dict.fromkeys(JPEG_DCT | JPEG_LOSSLESS, _jpeg),
    **dict.fromkeys(JPEG_LS, _jpegls),
    **dict.fromkeys(J2K, _j2k),
    **dict.fromkeys(HTJ2K, _htj2k),
    uid.RLELossless: _rle,
}
FAST_SYNTAXES = frozenset(_FULL)
"""Transfer syntaxes whose frames `decode_stored` decodes with its own codec."""


def decode_stored(
    frame: bytes, tsyntax: str, rows: int, columns: int, dtype: np.dtype
) -> np.ndarray | None:
    """A grayscale frame's stored values as a writable (rows, columns) array of `dtype`, decoded
    by the syntax's fast codec; None when none covers it (the caller decodes with pydicom)."""
    codec = _FULL.get(tsyntax)
    if codec is None or dtype.kind != "u":
        return None  # signed data: pydicom knows each codec's sign conventions
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = codec(frame, rows, columns, dtype)
    except Exception:  # a codestream this codec will not take: pydicom decides (and reports)
        return None
    if arr.shape != (rows, columns) or arr.dtype.kind != "u" or arr.itemsize > dtype.itemsize:
        return None
    if arr.dtype != dtype or not arr.flags.writeable:
        arr = arr.astype(dtype)
    return arr


def decode_reduced(
    frame: bytes, tsyntax: str, rows: int, columns: int, bits_stored: int, size: int
) -> np.ndarray | None:
    """A frame decoded at a reduced resolution (see the module docstring), as stored values
    on the area-resize grid of the full frame (uint16 from DCT scaling, float32 from a shifted
    wavelet level); None when `size` is not small enough for a coarser read, the syntax has
    none, or the frame will not decode that way (the caller then decodes it whole)."""
    try:
        if tsyntax in JPEG_DCT:
            return _jpeg_scaled(frame, rows, columns, bits_stored, size)
        if tsyntax in J2K | HTJ2K:
            return _wavelet_level(frame, tsyntax in HTJ2K, rows, columns, bits_stored, size)
    except Exception:  # e.g. fewer levels coded than asked for: decode it whole
        return None
    return None


def _jpeg_scaled(
    frame: bytes, rows: int, columns: int, bits_stored: int, size: int
) -> np.ndarray | None:
    """DCT-domain scaling by 1/2^level: the coarsest that keeps its margin over `size` (1x
    at 1/8, else `_WAVELET_MARGIN`) and divides the frame exactly (a partial last block would
    shift the grid)."""
    level = 0
    for k in range(1, _DCT_MAX_LEVEL + 1):
        margin = 1 if k == _DCT_MAX_LEVEL else _WAVELET_MARGIN
        if rows % (1 << k) or columns % (1 << k):
            break
        if min(rows, columns) >> k >= margin * size:
            level = k
    header = jpeg_frame_header(frame)
    if level == 0 or header is None or header[1] != 8 or bits_stored < 8:
        return None  # 12-bit frames: the TurboJPEG API decodes 8-bit samples only
    if simplejpeg.decode_jpeg_header(frame)[2] != "Gray":
        return None  # colour: decode it whole
    shape = (rows >> level, columns >> level)
    arr = simplejpeg.decode_jpeg(
        frame, colorspace="GRAY", min_height=shape[0], min_width=shape[1], min_factor=1 << level
    )  # the scaling factor 1/2^level: the smallest output that is at least `shape`
    if arr.shape != (*shape, 1):
        return None
    arr = arr.reshape(shape)
    # Already on the area grid: stored values (integers) of a smaller frame, which the fast
    # path then shrinks on integers like any other.
    return arr.astype(np.uint16)


def _wavelet_level(
    frame: bytes, ht: bool, rows: int, columns: int, bits_stored: int, size: int
) -> np.ndarray | None:
    """A JPEG 2000 / HTJ2K frame decoded at resolution level r (each level halves both
    sides): the coarsest (at most `_WAVELET_MAX_LEVEL`) that keeps `_WAVELET_MARGIN` x `size`
    pixels a side, shifted onto the area-resize grid."""
    level = 0
    while (
        level < _WAVELET_MAX_LEVEL and min(rows, columns) >> (level + 1) >= _WAVELET_MARGIN * size
    ):
        level += 1
    if level == 0:
        return None
    params = openjpeg.get_parameters(frame)
    precision = int(params["precision"])
    if params["is_signed"] or int(params["samples_per_pixel"]) != 1:
        return None  # colour or signed: decode it whole
    if ht:
        arr = imagecodecs.htj2k_decode(frame, skipres=level)
    else:
        with Image.open(io.BytesIO(frame)) as im:
            im.reduce = level  # Pillow's OpenJPEG decoder reads only the levels it needs
            im.load()
            mode, arr = im.mode, np.asarray(im)
        if mode not in ("I;16", "L"):
            return None
        if mode == "I;16" and precision < 16:
            arr = arr >> (16 - precision)  # Pillow scales I;16 to the full 16 bits
    if arr.shape != (-(-rows >> level), -(-columns >> level)):
        return None
    if precision > bits_stored and arr.max() >> bits_stored:
        # Values the stored bits cannot hold (the full decode masks their high bits).
        return None
    return _onto_area_grid(arr.astype(np.float32), level)


def _onto_area_grid(img: np.ndarray, level: int) -> np.ndarray:
    """Shift a wavelet level's low-pass samples onto the area-resize grid, in place.

    Wavelet coding stores the image as a pyramid, so a coarse level costs a fraction of the
    full decode (2500x2048: level 1 about 4x less). Its low-pass sample n sits on input pixel
    2^r n, while the mean of a 2^r block sits (2^r - 1) / 2 pixels further on; shifting the
    level by that much (linear interpolation) brings it onto the area-resize grid. On phantoms
    the result differs from full decode + area resize by under 0.1% on average and 0.2% at the
    99th percentile (uncorrected: 0.2-0.7% and 1.5-5%); the tests bound it.
    """
    f = np.float32((1.0 - 2.0**-level) / 2.0)  # the offset, in pixels of this level
    # x[i] += f * (x[i + 1] - x[i]), in place; the last row/column stays as it is (the edge
    # value, continued).
    step = np.subtract(img[1:], img[:-1])
    step *= f
    img[:-1] += step
    step = np.subtract(img[:, 1:], img[:, :-1])
    step *= f
    img[:, :-1] += step
    return img


def encode_frame(pixels: np.ndarray, syntax: str, bits: int) -> bytes:
    """One grayscale frame coded in `syntax` by the same libraries' encoders (libjpeg-turbo,
    CharLS, OpenJPEG, OpenJPH): test and benchmark files in syntaxes pydicom cannot write
    (HTJ2K, 12-bit JPEG). Lossy settings: JPEG quality 90, JPEG-LS NEAR=2, JPEG 2000 at 50 dB
    PSNR (about 10:1 on a noisy 12-bit radiograph)."""
    if syntax in JPEG_LOSSLESS:
        return imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=bits)
    if syntax in JPEG_DCT:
        return imagecodecs.jpeg8_encode(pixels, level=90, bitspersample=bits)
    if syntax in JPEG_LS:
        return imagecodecs.jpegls_encode(pixels, level=0 if syntax == uid.JPEGLSLossless else 2)
    # Enough wavelet levels for the reduced reads, few enough for small test images.
    resolutions = max(1, min(6, int(np.log2(min(pixels.shape))) - 2))
    if syntax in J2K:
        lossless = syntax == uid.JPEG2000Lossless
        return imagecodecs.jpeg2k_encode(
            pixels, level=0 if lossless else 50, codecformat="J2K", reversible=lossless,
            bitspersample=bits, resolutions=resolutions,
        )  # fmt: skip
    if syntax not in HTJ2K:
        raise ValueError(f"no encoder here writes {uid.UID(syntax).name}")
    # OpenJPH writes RPCL progression, so its lossless stream suits every HTJ2K syntax.
    lossless = syntax != uid.HTJ2K
    return imagecodecs.htj2k_encode(
        pixels, level=0 if lossless else 0.01, reversible=lossless, resolutions=resolutions
    )
