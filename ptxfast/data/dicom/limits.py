"""The safety limits: sizes a header claims are checked before any pixel is read or inflated.

A corrupt or hostile header cannot make us allocate gigabytes: a frame over `MAX_PIXELS` is
refused (`check_size`), a deflated data set promising more than `MAX_PIXEL_BYTES` is refused
before it is inflated (`check_promise`), uncompressed pixel data shorter than a frame is refused
up front (`check_native_length`), and a compressed frame whose own codec header (JPEG, JPEG-LS,
JPEG 2000) claims more pixels than the DICOM header is refused before it is decoded
(`check_codec_size`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import openjpeg
from pydicom import uid
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from ptxfast.data.dicom.info import read_error
from ptxfast.data.dicom.tags import PIXEL_DATA, int_tag, peek, text_tag

__all__ = [
    "HTJ2K",
    "J2K",
    "JPEG_DCT",
    "JPEG_LOSSLESS",
    "JPEG_LS",
    "MAX_PIXELS",
    "MAX_PIXEL_BYTES",
    "NATIVE_SYNTAXES",
    "check_codec_size",
    "check_header",
    "check_native_length",
    "check_promise",
    "check_size",
    "first_frame",
    "jpeg_frame_header",
]

MAX_PIXELS = 8192 * 8192
"""Largest frame (rows x columns) we decode: 64 Mi pixels, 256 MiB as float32. A header
claiming more is refused before any pixel is read."""

MAX_PIXEL_BYTES = MAX_PIXELS * 4
"""Largest pixel data (all frames, as stored) we inflate from a deflated data set: the size
of the largest frame as float32. A header promising more is refused before inflating."""

NATIVE_SYNTAXES = frozenset({uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian})
# The compressed syntaxes by codec family (`codecs` decodes each with its own library).
JPEG_DCT = frozenset({uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit})
JPEG_LOSSLESS = frozenset({uid.JPEGLossless, uid.JPEGLosslessSV1})
JPEG_LS = frozenset({uid.JPEGLSLossless, uid.JPEGLSNearLossless})
J2K = frozenset({uid.JPEG2000, uid.JPEG2000Lossless})
HTJ2K = frozenset({uid.HTJ2K, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL})
# Whose frame header (SOF/SOF55, SIZ) names the frame's size.
_JPEG_HEADERED = JPEG_DCT | JPEG_LOSSLESS | JPEG_LS
_WAVELET = J2K | HTJ2K
# Start-of-frame markers: JPEG's SOF0-SOF15 less DHT (C4), JPG (C8), DAC (CC); JPEG-LS SOF55.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}


def check_header(ds: Dataset, path: Path) -> tuple[int, int, int]:
    """Rows, columns, frames from the header; refuse non-images and absurd sizes."""
    if "PixelData" not in ds:
        sop = text_tag(ds, "SOPClassUID")
        kind = UID(sop).name if sop else "no SOP Class UID"
        raise read_error(path, f"DICOM without pixel data ({kind}); not an image")
    return check_size(ds, path)


def check_size(ds: Dataset, path: Path) -> tuple[int, int, int]:
    """Rows, columns, frames from the header; refuse a frame over `MAX_PIXELS`."""
    rows, columns = int_tag(ds, "Rows"), int_tag(ds, "Columns")
    if not rows or not columns or rows < 0 or columns < 0:
        raise read_error(path, f"DICOM header has no valid Rows/Columns ({rows}, {columns})")
    if rows * columns > MAX_PIXELS:
        raise read_error(
            path,
            f"header claims {rows}x{columns} pixels, over the {MAX_PIXELS:,} pixel limit "
            "(corrupt header or not a radiograph); refusing to decode",
        )
    frames = int_tag(ds, "NumberOfFrames") or 1
    return rows, columns, frames


def check_promise(ds: Dataset, path: Path) -> tuple[int, str]:
    """The bytes of pixel data a (deflated) header promises, and the promise in words; refuse
    a promise over `MAX_PIXEL_BYTES` before anything is inflated."""
    rows, columns, frames = check_size(ds, path)
    samples = int_tag(ds, "SamplesPerPixel") or 1
    bits = int_tag(ds, "BitsAllocated") or 16
    promised = -(-rows * columns * frames * samples * bits // 8)
    what = f"{rows}x{columns} pixels x {frames} frame(s) x {samples * bits} bits"
    if promised > MAX_PIXEL_BYTES:
        raise read_error(
            path,
            f"header claims {what}, {promised:,} bytes, over the {MAX_PIXEL_BYTES:,} byte "
            "limit (corrupt header or not a radiograph); refusing to inflate",
        )
    return promised, what


def check_native_length(f: BinaryIO, ds: Dataset, path: Path, pixels: int) -> None:
    """Refuse uncompressed pixel data shorter than one frame (a truncated file) up front,
    with the same message whichever decode path follows."""
    tsyntax = UID(text_tag(ds.file_meta, "TransferSyntaxUID"))
    if tsyntax.is_encapsulated:
        return
    samples = int_tag(ds, "SamplesPerPixel") or 1
    if peek(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # chroma subsampled: Y Y Cb Cr per pair of pixels
    needed = -(-pixels * samples * (int_tag(ds, "BitsAllocated") or 0) // 8)
    elem = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if tsyntax in NATIVE_SYNTAXES and isinstance(elem, RawDataElement) and elem.value is None:
        # Still on disk: what the file holds past the element's start.
        present = min(elem.length, max(0, os.fstat(f.fileno()).st_size - elem.value_tell))
    else:
        present = len(ds.PixelData or b"")  # deflate/big endian: read now, as decoding would
    if present < needed:
        raise read_error(path, f"truncated pixel data: {present} of {needed} bytes present")


def jpeg_frame_header(frame: bytes) -> tuple[int, int, int, int] | None:
    """(SOF marker, precision, rows, columns) of a JPEG or JPEG-LS frame's start-of-frame
    header; None when the frame names none before its scan data."""
    i = 2 if frame[:2] == b"\xff\xd8" else 0
    while i + 4 <= len(frame):
        if frame[i] != 0xFF:
            i += 1
            continue
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _SOF_MARKERS:
            if i + 9 > len(frame):
                return None
            rows = int.from_bytes(frame[i + 5 : i + 7], "big")
            return marker, frame[i + 4], rows, int.from_bytes(frame[i + 7 : i + 9], "big")
        elif marker == 0xDA:  # scan data before any frame header
            return None
        elif 0xD0 <= marker <= 0xD8 or marker in (0x00, 0x01):  # no length field
            i += 2
        else:
            i += 2 + int.from_bytes(frame[i + 2 : i + 4], "big")
    return None


def _codec_size(frame: bytes, tsyntax: str) -> tuple[int, int] | None:
    """(rows, columns) a compressed frame's own header claims; None when it names none."""
    if tsyntax in _WAVELET:
        params = openjpeg.get_parameters(frame)
        return int(params["rows"]), int(params["columns"])
    if tsyntax not in _JPEG_HEADERED:
        return None  # RLE: the decoder sizes its output from Rows x Columns alone
    header = jpeg_frame_header(frame)
    return None if header is None else header[2:]


def check_codec_size(
    frame: bytes | None, tsyntax: str, path: Path, rows: int, columns: int
) -> None:
    """Refuse a compressed first `frame` (None: not pulled out, nothing to check) whose codec
    header claims more pixels than the DICOM header, before any decoder allocates for it."""
    if frame is None:
        return
    try:
        size = _codec_size(frame, tsyntax)
    except Exception:
        return  # an unreadable codec header: the decoder reports it
    if size is not None and size[0] * size[1] > rows * columns:
        raise read_error(
            path,
            f"{UID(tsyntax).name} frame header claims {size[0]}x{size[1]} pixels, more than "
            f"the {rows}x{columns} of the DICOM header (corrupt or hostile file); refusing to "
            "decode",
        )


def first_frame(ds: Dataset, frames: int) -> bytes | None:
    """The first compressed frame of an encapsulated data set's pixel data; None when its
    framing cannot be read (pydicom's decoder then reports why)."""
    try:
        return next(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception:
        return None
