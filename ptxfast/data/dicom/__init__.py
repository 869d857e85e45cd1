"""Reading chest X-rays exactly: DICOM, PNG and JPEG to float32 in [0, 1], air dark.

DICOM goes through pydicom 3 and its pixel functions (modality LUT / rescale, VOI LUT or
window, colour conversion), so every transfer syntax that pydicom and the pylibjpeg plugins
decode is read the way pydicom defines it. Grayscale files — the common case when scoring a
folder or training — take a fast path: the header is parsed with the pixel data deferred,
uncompressed little-endian pixels are read straight from their file offset, compressed frames
are decoded to stored values by the fastest codec for their syntax (`codecs`: libjpeg-turbo,
CharLS, OpenJPEG, OpenJPH; pydicom's decoders for the rest), and rescale + window +
MONOCHROME1 inversion are folded into one affine map. The fast path gives the same pixels as
the full path (the tests compare them), except that a windowed JPEG, JPEG 2000 or HTJ2K frame
read for a much smaller size is decoded at a reduced resolution (`codecs.decode_reduced`: DCT
scaling or a coarser wavelet level, within 0.2% at the 99th percentile on phantoms); anything
it does not cover falls back to pydicom.

Every unreadable input raises one exception, `ImageReadError`, whose message names the
file and the reason. Header sizes are checked before any pixel is read, so a corrupt or
hostile header cannot make us allocate gigabytes. That holds for compressed inputs too: a
Deflated Explicit VR Little Endian data set is inflated in bounded steps, its header from a
bounded prefix first, so the size it promises (Rows x Columns x frames x samples x bits) is
checked before the pixels are inflated, and inflating past that promise is refused; a
compressed frame whose own codec header (JPEG, JPEG-LS, JPEG 2000) claims more pixels than
the DICOM header is refused before it is decoded.

The package holds one module per concern: `info` (`ImageInfo`, `ImageReadError`), `header`
(recognising DICOM, parsing headers, the bounded inflation of deflated data sets), `tags`
(reading tag values fast), `limits` (the size checks made before any pixel is read),
`pixels` (pydicom's full decode and the pixel rules), `native` (the fast path), `codecs` (the
fast codec per transfer syntax, reduced-resolution reads) and `pillow`
(PNG/JPEG); the one area resize is `ptxfast.data.resize`. This module wires them into the
readers, `load_image` and `read_image`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom.uid import UID

from ptxfast.data.dicom.codecs import FAST_SYNTAXES
from ptxfast.data.dicom.header import (
    DEFER_BYTES,
    SNIFF_BYTES,
    is_dicom,
    looks_dicom,
    open_file,
    parse_dicom,
    read_dataset,
)
from ptxfast.data.dicom.info import ImageInfo, ImageReadError, NotEligible, describe, read_error
from ptxfast.data.dicom.limits import (
    MAX_PIXEL_BYTES,
    MAX_PIXELS,
    check_codec_size,
    check_header,
    check_native_length,
    first_frame,
)
from ptxfast.data.dicom.native import EncodedFrame, HandOverRule, decode_fast, encoded_frame
from ptxfast.data.dicom.pillow import load_pillow
from ptxfast.data.dicom.pixels import decode_full as _decode_full
from ptxfast.data.dicom.tags import dicom_info, prepare, text_tag
from ptxfast.data.resize import resize

__all__ = [
    "MAX_PIXEL_BYTES",
    "MAX_PIXELS",
    "EncodedFrame",
    "ImageInfo",
    "ImageReadError",
    "NotEligible",
    "is_dicom",
    "load_image",
    "load_image_or_frame",
    "read_dataset",
    "read_image",
    "resize",
]


def read_image(path: str | os.PathLike, *, fast: bool = True) -> np.ndarray:
    """Read one image as float32 (H, W) in [0, 1], MONOCHROME2 convention (air dark).

    DICOM: first frame, modality LUT, then VOI LUT or window if present (else the frame's
    min/max), MONOCHROME1 inverted, colour to luma. PNG/JPEG: scaled by the bit depth.
    `fast=False` forces pydicom's full decode (same pixels, slower; for checking).
    """
    return load_image(path, fast=fast)[0]


def load_image(
    path: str | os.PathLike,
    size: int | None = None,
    *,
    fast: bool = True,
    eligibility: str = "off",
) -> tuple[np.ndarray, ImageInfo]:
    """Read an image (see `read_image`) and, if `size` is given, area-resize it to size x size.

    Returns the float32 image in [0, 1] and the file's `ImageInfo`. This is the path the
    datasets and the scorer use; the stored size is in `info.rows` / `info.columns`.
    `eligibility` ("default", "strict" or "off", see `ptxfast.data.eligibility`) is checked on
    the header before the pixels are decoded; a refused file raises `NotEligible`.
    """
    return _load(Path(path), size, fast, eligibility, None)


def load_image_or_frame(
    path: str | os.PathLike, size: int, *, eligibility: str = "off", hand_over: HandOverRule
) -> tuple[np.ndarray | EncodedFrame, ImageInfo]:
    """`load_image(path, size)`, except that a windowed grayscale DICOM frame whose (transfer
    syntax, bits stored) `hand_over` takes comes back still compressed, as an `EncodedFrame`,
    once its header (eligibility, size limits, the codec's own header) has been checked:
    decoding workers parse and check, a GPU decodes (`ptxfast.score.gpu_decode`)."""
    return _load(Path(path), size, True, eligibility, hand_over)


def _load(
    path: Path, size: int | None, fast: bool, eligibility: str, hand_over: HandOverRule | None
) -> tuple[np.ndarray | EncodedFrame, ImageInfo]:
    from ptxfast.data.eligibility import check

    with open_file(path) as f:
        head = f.read(SNIFF_BYTES)
        f.seek(0)
        if looks_dicom(head):
            return _load_dicom(f, path, fast, size, eligibility, hand_over)
        verdict = check(None, dicom=False, rule=eligibility)
        if not verdict.eligible:
            raise NotEligible(path, verdict.reason)
        img, info = load_pillow(f, path)
        info.eligibility_note = verdict.note
    if size is not None:
        img = resize(img, size)
    return img, info


def _load_dicom(
    f: BinaryIO,
    path: Path,
    fast: bool,
    size: int | None,
    eligibility: str = "off",
    hand_over: HandOverRule | None = None,
) -> tuple[np.ndarray | EncodedFrame, ImageInfo]:
    from ptxfast.data.eligibility import check

    # Parse the header with the pixel data left on disk, so size checks come first.
    ds = parse_dicom(f, path, defer_size=DEFER_BYTES)
    # What the file is comes before whether it decodes: a structured report is "not
    # eligible", not "no pixel data".
    verdict = check(
        text_tag(ds, "Modality"),
        text_tag(ds, "ViewPosition"),
        text_tag(ds, "BodyPartExamined"),
        rule=eligibility,
    )
    if not verdict.eligible:
        raise NotEligible(path, verdict.reason)
    rows, columns, frames = check_header(ds, path)
    info = dicom_info(ds, path, rows, columns, frames)
    info.eligibility_note = verdict.note
    if frames > 1:
        warnings.warn(f"{path}: {frames} frames; using the first", stacklevel=3)
    prepare(ds, path)
    tsyntax = text_tag(ds.file_meta, "TransferSyntaxUID")
    try:
        check_native_length(f, ds, path, rows * columns)
        # The first compressed frame, pulled out once for the checks and the fast codecs.
        frame = first_frame(ds, frames) if tsyntax in FAST_SYNTAXES else None
        check_codec_size(frame, tsyntax, path, rows, columns)
        encoded = encoded_frame(ds, rows, columns, frame, hand_over)
        if encoded is not None:
            return encoded, info
        img = decode_fast(f, ds, path, rows, columns, size, frame) if fast else None
        if img is None:
            img = _decode_full(ds)
            if size is not None:
                img = resize(img, size)
    except ImageReadError:
        raise
    except Exception as exc:  # decoders raise many types on corrupt or truncated data
        name = UID(tsyntax).name if tsyntax else "unknown transfer syntax"
        raise read_error(path, f"cannot decode the pixel data ({name}): {describe(exc)}") from exc
    return img, info
