"""Reading a DICOM header safely: recognising DICOM by content, parsing with the pixels deferred.

`parse_dicom` parses a header with pydicom, or, for a Deflated Explicit VR Little Endian data
set, inflates it in bounded steps: the header from a bounded prefix first, so the size it
promises is checked (`limits.check_promise`) before the pixels are inflated, and inflating past
that promise is refused (pydicom would inflate the whole data set first: 1.1 GB for a 510 KB
file promising 16384² pixels).
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filereader import read_dataset as _read_elements
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import VR

from ptxfast.data.dicom.info import ImageReadError, describe, read_error
from ptxfast.data.dicom.limits import check_promise

__all__ = [
    "DEFER_BYTES",
    "SNIFF_BYTES",
    "is_dicom",
    "looks_dicom",
    "open_file",
    "parse_dicom",
    "read_dataset",
]

DEFER_BYTES = 16 * 1024  # larger elements (the pixels) stay on disk until asked for
SNIFF_BYTES = 132  # preamble (128) + "DICM"
_EXPLICIT_VRS = frozenset(v.value.encode("ascii") for v in VR if len(v.value) == 2)
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # (Float/Double Float) Pixel Data
_DEFLATED_UID = DeflatedExplicitVRLittleEndian.encode("ascii")
_META_SNIFF = 4096  # the file meta (where the transfer syntax is named) sits in the first KiB
_INFLATE_CHUNK = 1 << 20  # compressed bytes read at a time
_HEADER_FIRST = 64 * 1024  # inflated bytes first tried for the header; grown x4 as needed
_HEADER_MAX = 16 * 2**20  # everything before the pixel data, inflated
_TRAILER_MAX = 64 * 1024  # elements after the pixel data (trailing padding, signatures)


def looks_dicom(head: bytes) -> bool:
    """DICOM by content: "DICM" after the preamble, or a bare data set starting at group 8."""
    if len(head) >= SNIFF_BYTES and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    # Files without preamble/meta (what pydicom reads with force=True) open with a group
    # 0x0002 or 0x0008 element; check the VR (explicit) or a sane even length (implicit)
    # so that random bytes starting with 08 00 are not taken for DICOM.
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    if group_le in (0x0002, 0x0008):
        if head[4:6] in _EXPLICIT_VRS:
            return True
        length = int.from_bytes(head[4:8], "little")
        return length % 2 == 0 and length < 0x10000
    return group_be == 0x0008 and head[4:6] in _EXPLICIT_VRS


def is_dicom(path: str | os.PathLike) -> bool:
    """True when `path` holds DICOM, judged by its bytes, not its name (no exception)."""
    try:
        with open(path, "rb") as f:
            return looks_dicom(f.read(SNIFF_BYTES))
    except OSError:
        return False


def open_file(path: Path) -> BinaryIO:
    """`path` opened for reading; an `ImageReadError` naming it when it cannot be."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise read_error(path, f"cannot open ({exc.strerror or describe(exc)})") from exc


def parse_dicom(f: BinaryIO, path: Path, **kwargs) -> Dataset:
    """The data set of `f` (pydicom's `dcmread` keywords pass through), with the transfer
    syntax recorded even for a bare data set; corrupt headers raise `ImageReadError`."""
    try:
        ds = _read_deflated(f, path, kwargs.get("stop_before_pixels", False))
        if ds is None:
            ds = pydicom.dcmread(f, force=True, **kwargs)
    except ImageReadError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt headers
        raise read_error(path, f"corrupt or truncated DICOM header ({describe(exc)})") from exc
    if len(ds) == 0:
        # pydicom warns and hands back an empty data set when the file ends early (e.g.
        # inside encapsulated pixel data).
        raise read_error(path, "truncated or corrupt DICOM: no data set could be read")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # A bare data set (no meta): record the encoding pydicom detected, which its
        # pixel decoders need.
        implicit, little = ds.original_encoding
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = (
                ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
            )
    return ds


class _Inflater:
    """Raw deflate of `f` from its current position, inflated only as far as asked."""

    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f, self.path = f, path
        self.z = zlib.decompressobj(-zlib.MAX_WBITS)
        self.out = bytearray()
        self.ended = False

    def fill(self, total: int) -> None:
        """Inflate until `total` bytes are out or the stream ends, never much past `total`."""
        try:
            while len(self.out) < total and not self.ended:
                data = self.z.unconsumed_tail or self.f.read(_INFLATE_CHUNK)
                if not data:
                    self.out += self.z.flush()
                    self.ended = True
                    break
                self.out += self.z.decompress(data, total - len(self.out))
                self.ended = self.z.eof
        except zlib.error as exc:
            raise read_error(self.path, f"corrupt deflated data set (zlib: {exc})") from exc


def _elements(data: bytes | bytearray, **kwargs) -> tuple[Dataset, int | None]:
    """Explicit VR little endian elements of `data` up to the pixel data; (dataset, offset of
    the pixel data element, None when `data` holds none)."""
    fp = DicomBytesIO(bytes(data))
    fp.is_little_endian, fp.is_implicit_VR = True, False
    at: list[int] = []

    def stop(tag, vr, length) -> bool:
        if tag in _PIXEL_TAGS:
            at.append(tag)
            return True
        return False

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a prefix cut inside an element: read more and retry
        ds = _read_elements(fp, False, True, stop_when=stop, **kwargs)
    return ds, fp.tell() if at else None


def _read_deflated(f: BinaryIO, path: Path, stop_before_pixels: bool) -> Dataset | None:
    """A Deflated Explicit VR Little Endian file read with bounded memory; None (f rewound)
    for any other transfer syntax.

    pydicom inflates the whole data set before looking at it (1.1 GB for a 510 KB file
    promising 16384² pixels); here the header is parsed from a bounded inflated prefix, the
    size it promises is checked (`limits.check_promise`), and the rest is
    inflated only up to that promise."""
    head = f.read(_META_SNIFF)
    f.seek(0)
    if _DEFLATED_UID not in head:
        return None
    preamble = read_preamble(f, True)
    meta = _read_file_meta_info(f)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        f.seek(0)
        return None
    inflater = _Inflater(f, path)
    want = _HEADER_FIRST
    while True:
        inflater.fill(want)
        try:
            ds, at = _elements(inflater.out)
        except Exception:
            if inflater.ended:
                raise
            ds, at = None, None
        if at is not None or inflater.ended:
            break
        if want >= _HEADER_MAX:
            raise read_error(
                path,
                f"deflated data set has no pixel data in its first {_HEADER_MAX:,} bytes "
                "(corrupt header or not a radiograph); refusing to inflate more",
            )
        want = min(want * 4, _HEADER_MAX)
    if at is not None and not stop_before_pixels:
        promised, what = check_promise(ds, path)
        # The pixel element's own header (12 bytes), its value, a pad byte, a trailer.
        cap = at + 12 + promised + 1 + _TRAILER_MAX
        inflater.fill(cap + 1)
        if len(inflater.out) > cap:
            raise read_error(
                path,
                f"deflated data set inflates past the {cap:,} bytes its header promises "
                f"({what}); refusing to decode",
            )
        fp = DicomBytesIO(bytes(inflater.out))
        fp.is_little_endian, fp.is_implicit_VR = True, False
        ds = _read_elements(fp, False, True)
    out = FileDataset(str(path), ds, preamble, meta, False, True)
    out.set_original_encoding(False, True, ds._character_set)
    return out


def read_dataset(path: str | os.PathLike, *, stop_before_pixels: bool = False) -> Dataset:
    """The pydicom Dataset of a DICOM file, for callers that need tags (e.g. DICOM SEG).

    Raises ImageReadError when the file is not DICOM or its header cannot be parsed.
    """
    path = Path(path)
    with open_file(path) as f:
        if not looks_dicom(f.read(SNIFF_BYTES)):
            raise read_error(path, "not a DICOM file (no 'DICM' marker or DICOM data set)")
        f.seek(0)
        return parse_dicom(f, path, stop_before_pixels=stop_before_pixels)
