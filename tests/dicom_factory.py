"""Small DICOM files for the tests, written with pydicom (and Pillow for JPEG baseline).

`image_dataset` builds a dataset around an array; `save` writes it in a transfer syntax,
compressing through pydicom's encoders (RLE, JPEG-LS, JPEG 2000), Pillow (JPEG baseline)
or the tiny lossless-JPEG encoder below (JPEG process 14, which no installed package
writes).
"""

from __future__ import annotations

import copy
import io
import struct
from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

DX_SOP_CLASS = uid.DigitalXRayImageStorageForPresentation
SR_SOP_CLASS = uid.ComprehensiveSRStorage

NATIVE = (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian)


def gray_pixels(
    rows: int = 64, columns: int = 64, *, bits: int = 12, signed: bool = False, seed: int = 0
) -> np.ndarray:
    """A smooth gradient plus noise spanning most of the `bits` range (uint16/int16)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    smooth = np.sin(x / columns * 5.0 + seed) * np.cos(y / rows * 3.0)
    top = 2**bits - 1
    values = (smooth * 0.45 + 0.5) * top + rng.normal(0.0, top * 0.02, (rows, columns))
    values = np.clip(np.rint(values), 0, top).astype(np.int64)
    if signed:
        values -= 2 ** (bits - 1)
        return values.astype(np.int16 if bits > 8 else np.int8)
    return values.astype(np.uint16 if bits > 8 else np.uint8)


def rgb_pixels(rows: int = 64, columns: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth uint8 RGB content (kept smooth so lossy JPEG stays close)."""
    y, x = np.mgrid[0:rows, 0:columns] / max(rows, columns)
    channels = [np.sin(x * 4 + seed), np.cos(y * 3), np.sin((x + y) * 2)]
    rgb = np.stack(channels, axis=-1) * 100 + 128
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def image_dataset(
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    photometric: str | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    frames: bool = False,
    sop_class: str = DX_SOP_CLASS,
) -> Dataset:
    """A DX-like image dataset holding `pixels` (rows, cols), (frames, rows, cols) with
    `frames=True`, or (rows, cols, 3) RGB; native little-endian until `save` says otherwise."""
    pixels = np.asarray(pixels)
    samples = 3 if pixels.ndim == 3 and not frames else 1
    bits_allocated = pixels.dtype.itemsize * 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.PatientID = "P7"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if samples == 3 else pixels.shape[-2:]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric or ("RGB" if samples == 3 else "MONOCHROME2")
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def save(ds: Dataset, path: Path, syntax: str = uid.ExplicitVRLittleEndian) -> Path:
    """Write `ds` to `path` in transfer syntax `syntax` (compressing a copy as needed)."""
    ds = copy.deepcopy(ds)  # Dataset.copy() is shallow and would share the elements
    if syntax == uid.ExplicitVRBigEndian:
        arr = np.frombuffer(ds.PixelData, dtype=f"<{_kind(ds)}{ds.BitsAllocated // 8}")
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax in (*NATIVE, uid.DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax == uid.JPEGBaseline8Bit:
        _to_jpeg_baseline(ds)
    elif syntax == uid.JPEGLosslessSV1:
        _to_jpeg_lossless(ds)
    elif syntax == uid.JPEG2000:
        ds.compress(syntax, j2k_cr=[4], encoding_plugin="pylibjpeg")
    elif syntax == uid.JPEGLSNearLossless:
        ds.compress(syntax, jls_error=2)
    else:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def save_bare(ds: Dataset, path: Path) -> Path:
    """Write `ds` as a bare implicit-VR data set: no preamble, no "DICM", no file meta."""
    bare = copy.deepcopy(ds)
    del bare.file_meta
    bare.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


def structured_report(path: Path) -> Path:
    """A minimal Comprehensive SR: a valid DICOM file with no pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SR_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = SR_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.save_as(path, enforce_file_format=True)
    return path


def _kind(ds: Dataset) -> str:
    return "i" if ds.PixelRepresentation == 1 else "u"


def _frame(ds: Dataset) -> np.ndarray:
    dtype = f"<{_kind(ds)}{ds.BitsAllocated // 8}"
    shape = (
        (ds.Rows, ds.Columns, ds.SamplesPerPixel)
        if ds.SamplesPerPixel > 1
        else (ds.Rows, ds.Columns)
    )
    return np.frombuffer(ds.PixelData, dtype=dtype).reshape(shape)


def _to_jpeg_baseline(ds: Dataset) -> None:
    from PIL import Image

    if ds.BitsAllocated != 8:
        raise ValueError("JPEG baseline holds 8-bit samples")
    arr = _frame(ds)
    buf = io.BytesIO()
    # 4:2:2 chroma subsampling, which is what YBR_FULL_422 declares.
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, subsampling=1)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    if ds.SamplesPerPixel == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit


def _to_jpeg_lossless(ds: Dataset) -> None:
    if ds.SamplesPerPixel != 1 or ds.PixelRepresentation != 0:
        raise ValueError("the test encoder writes unsigned grayscale only")
    ds.PixelData = encapsulate([jpeg_lossless(_frame(ds), int(ds.BitsStored))])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid.JPEGLosslessSV1


def jpeg_lossless(frame: np.ndarray, precision: int) -> bytes:
    """Encode one grayscale frame as ITU T.81 lossless JPEG, predictor 1 (process 14 SV1).

    One fixed Huffman table codes the 17 difference categories in 5 bits each; not
    compact, but a valid codestream for any precision 2-16.
    """
    x = frame.astype(np.int64)
    pred = np.empty_like(x)
    pred[:, 1:] = x[:, :-1]  # left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the pixel above
    pred[0, 0] = 1 << (precision - 1)
    diff = (x - pred + 32767) % 65536 - 32767  # modulo 2^16, range -32767..32768 (T.81 H.2)
    ssss = np.frexp(np.abs(diff))[1].astype(np.int64)  # bit length; 0 for 0
    extra = np.where(diff >= 0, diff, diff + (1 << ssss) - 1)
    bits = []
    for s, e in zip(ssss.ravel().tolist(), extra.ravel().tolist(), strict=True):
        bits.append(format(s, "05b"))
        if 0 < s < 16:  # category 16 (diff 32768) has no extra bits
            bits.append(format(e, f"0{s}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)  # pad with 1-bits
    data = int(stream, 2).to_bytes(len(stream) // 8, "big").replace(b"\xff", b"\xff\x00")
    rows, columns = frame.shape
    sof = struct.pack(">HHBHHB3B", 0xFFC3, 11, precision, rows, columns, 1, 1, 0x11, 0)
    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)  # 17 codes of length 5
    dht = struct.pack(">HHB", 0xFFC4, 2 + 1 + 16 + 17, 0x00) + counts + bytes(range(17))
    sos = struct.pack(">HHB2B3B", 0xFFDA, 8, 1, 1, 0x00, 1, 0, 0)
    return b"\xff\xd8" + sof + dht + sos + data + b"\xff\xd9"


def deflated(ds: Dataset, path: Path, pixel_bytes: int | None = None) -> Path:
    """Write `ds` in Deflated Explicit VR Little Endian, streaming, so its Pixel Data can be
    `pixel_bytes` zeros (a file of ~1/1000 of that: what a deflate bomb looks like) instead
    of `ds.PixelData`, without ever holding them in memory."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    pixels = ds.PixelData if pixel_bytes is None else None
    del ds.PixelData
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_dataset(header, ds)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    length = len(pixels) if pixels is not None else pixel_bytes
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length + length % 2)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + meta.getvalue())
        f.write(z.compress(header.getvalue() + element))
        if pixels is not None:
            f.write(z.compress(pixels + b"\0" * (len(pixels) % 2)))
        else:
            chunk = b"\0" * 2**22
            left = length + length % 2
            while left:
                f.write(z.compress(chunk[: min(left, len(chunk))]))
                left -= min(left, len(chunk))
        f.write(z.flush())
    return path


def with_frame(ds: Dataset, path: Path, syntax: str, frame: bytes) -> Path:
    """Write `ds` with `frame` (a codestream made by the caller, e.g. with imagecodecs'
    encoders) as its encapsulated pixel data in transfer syntax `syntax`."""
    ds = copy.deepcopy(ds)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def codestream(pixels: np.ndarray, syntax: str, bits: int) -> bytes:
    """One grayscale frame coded in `syntax` by the codecs' own encoders (imagecodecs), for
    syntaxes pydicom cannot write."""
    from ptxfast.data.dicom.codecs import encode_frame

    return encode_frame(pixels, syntax, bits)


def reduced_calls(monkeypatch) -> list[bool]:
    """Records each `codecs.decode_reduced` call (True where it read at a reduced resolution,
    False where it declined), through `monkeypatch`."""
    from ptxfast.data.dicom import codecs

    calls: list[bool] = []
    real = codecs.decode_reduced

    def recording(*args):
        out = real(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(codecs, "decode_reduced", recording)
    return calls
