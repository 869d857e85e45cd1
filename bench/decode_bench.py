"""Decode + resize throughput on what archives hold: large 12/16-bit radiographs in every syntax.

Writes N synthetic radiographs (default 2500x2048, 12 bits stored in 16, smooth anatomy-like
content plus signal-dependent detector noise, windowed like a DX export) in each transfer syntax
(JPEG baseline gets the 12-bit image's top 8 bits: an 8-bit export of the detector's image, with
its relative noise), then times, on one core (the process pins itself to one CPU and limits
every thread pool):

  naive    pydicom.dcmread + ds.pixel_array + astype(float32) + Pillow bilinear resize
  ptxfast  ptxfast.data.dicom.load_image(path, size): window applied, area resize (fast codecs,
           reduced-resolution reads where the syntax allows)
  codec    the file read whole, its frame (at an offset found beforehand) given to the codec
           library directly (imagecodecs: libjpeg-turbo, CharLS, OpenJPH, PackBits for RLE;
           pylibjpeg-openjpeg: OpenJPEG), at full resolution, + the same window and area resize as
           ptxfast's (its own float32 pass): no header parsing at all

Each of --repeat passes reads every file of a syntax with every method back to back (page cache
warm, in a rotating order), so load from other processes on a shared machine hits them alike;
a file's time is its best over the passes, files/s the files over the sum of those. Parity: "exact" when ptxfast's full-size read equals pydicom's (`fast=False`) to
float32 rounding (max |Δ| shown otherwise); "reduced" is the mean |Δ| of ptxfast's read at
`--size` against the full decode + area resize (0 when it decoded at full resolution).

    python bench/decode_bench.py --n 4 --size 512 --repeat 3
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import openjpeg
import pydicom
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames

from ptxfast.data.dicom import load_image, read_image
from ptxfast.data.dicom.codecs import encode_frame
from ptxfast.data.resize import resize

WINDOW = (0.5, 0.8)  # center, width as fractions of the stored range
_LOSSLESS = {
    uid.ExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.JPEGLosslessSV1,
}
# (label, syntax, bits stored it holds at most)
SYNTAXES = [
    ("explicit VR little endian", uid.ExplicitVRLittleEndian, 16),
    ("RLE lossless", uid.RLELossless, 16),
    ("JPEG-LS lossless", uid.JPEGLSLossless, 16),
    ("JPEG-LS near-lossless (NEAR=2)", uid.JPEGLSNearLossless, 16),
    ("JPEG 2000 lossless", uid.JPEG2000Lossless, 16),
    ("JPEG 2000 lossy (50 dB)", uid.JPEG2000, 16),
    ("HTJ2K lossless", uid.HTJ2KLossless, 16),
    ("HTJ2K lossless RPCL", uid.HTJ2KLosslessRPCL, 16),
    ("JPEG lossless SV1", uid.JPEGLosslessSV1, 16),
    ("JPEG extended 12-bit", uid.JPEGExtended12Bit, 12),
    ("JPEG baseline 8-bit", uid.JPEGBaseline8Bit, 8),
]


def radiograph(rows: int, columns: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth anatomy-like content (a bright body, two dark lungs, ribs, a soft gradient) plus
    detector noise whose spread grows with the signal (quantum noise), as unsigned ints."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y /= rows
    x /= columns
    body = np.exp(-(((x - 0.5) / 0.42) ** 6 + ((y - 0.52) / 0.48) ** 6))
    lungs = sum(np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.45) / 0.28) ** 2)) for cx in (0.32, 0.68))
    phase = rng.uniform(0, 2 * np.pi)
    ribs = 0.5 + 0.5 * np.sin(y * 60 + 8 * (x - 0.5) ** 2 + phase)
    signal = 0.15 + 0.6 * body - 0.35 * lungs * body + 0.08 * ribs * lungs + 0.05 * y
    top = 2**bits - 1
    values = signal * 0.8 * top
    values += rng.standard_normal(values.shape, dtype=np.float32) * np.sqrt(np.abs(values)) * 0.6
    return np.clip(np.rint(values), 0, top).astype(np.uint8 if bits <= 8 else np.uint16)


def write(path: Path, pixels: np.ndarray, syntax: str, bits: int) -> Path:
    """A DX image of `pixels` in `syntax`, windowed over the middle of the stored range."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.PatientID, ds.Modality = "BENCH", "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.WindowCenter = round(WINDOW[0] * 2**bits)
    ds.WindowWidth = round(WINDOW[1] * 2**bits)
    ds.PixelData = pixels.tobytes()
    if syntax == uid.RLELossless:
        ds.compress(syntax)
    elif syntax != uid.ExplicitVRLittleEndian:
        ds.PixelData = encapsulate([encode_frame(pixels, syntax, bits)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------- the methods


def naive(path: Path, size: int) -> np.ndarray:
    arr = pydicom.dcmread(path).pixel_array.astype(np.float32)
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))


def fast(path: Path, size: int) -> np.ndarray:
    return load_image(path, size)[0]


def _rle(frame: bytes, rows: int, columns: int) -> np.ndarray:
    """DICOM RLE: imagecodecs' PackBits on each segment (a byte plane, most significant
    first), the planes put together."""
    count, *offsets = np.frombuffer(frame, "<u4", count=16).tolist()
    ends = [*offsets[:count], len(frame)]
    planes = [
        np.frombuffer(imagecodecs.packbits_decode(frame[a:b]), np.uint8)[: rows * columns]
        for a, b in itertools.pairwise(ends)
    ]
    if len(planes) == 1:
        return planes[0].reshape(rows, columns)
    return ((planes[0].astype(np.uint16) << 8) | planes[1]).reshape(rows, columns)


def _codec(syntax: str) -> Callable[[bytes], np.ndarray]:
    """The codec library's full-resolution decode of one frame, called directly."""
    return {
        uid.JPEGLSLossless: imagecodecs.jpegls_decode,
        uid.JPEGLSNearLossless: imagecodecs.jpegls_decode,
        uid.JPEG2000Lossless: lambda frame: openjpeg.decode(bytes(frame)),
        uid.JPEG2000: lambda frame: openjpeg.decode(bytes(frame)),
        uid.HTJ2KLossless: imagecodecs.htj2k_decode,
        uid.HTJ2KLosslessRPCL: imagecodecs.htj2k_decode,
    }.get(syntax, imagecodecs.jpeg8_decode)


def codec_method(
    syntax: str, bits: int, frames: dict[Path, tuple[int, int]], shape: tuple[int, int]
):
    """File bytes -> the frame at its known offset -> codec -> the window -> area resize: the
    codec's own speed plus the same float32 work ptxfast does."""
    top = 2**bits
    center, width = WINDOW[0] * top, WINDOW[1] * top
    a, b = 1.0 / width, 0.5 - center / width
    decode = _codec(syntax)

    def run(path: Path, size: int) -> np.ndarray:
        start, length = frames[path]
        with open(path, "rb") as f:
            frame = memoryview(f.read())[start : start + length]
        if syntax == uid.ExplicitVRLittleEndian:
            arr = np.frombuffer(frame, np.uint16 if bits > 8 else np.uint8).reshape(shape)
        elif syntax == uid.RLELossless:
            arr = _rle(frame, *shape)
        else:
            arr = decode(frame)
        img = arr.astype(np.float32)
        img *= np.float32(a)
        img += np.float32(b)
        np.clip(img, 0.0, 1.0, out=img)
        return resize(img, size)

    return run


def _frames(paths: list[Path], syntax: str) -> dict[Path, tuple[int, int]]:
    """Where each file's (first) frame sits: (offset, length)."""
    out = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        if syntax == uid.ExplicitVRLittleEndian:
            frame = bytes(ds.PixelData)
        else:
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        out[path] = (path.read_bytes().rindex(frame), len(frame))
    return out


def _time(methods: dict[str, Callable], paths: list[Path], size: int, repeat: int) -> dict:
    """Files/s of each method: every file is read by every method back to back (in a rotating
    order), so a burst of load from other processes hits them alike; each file's time is its
    best over the passes."""
    names = list(methods)
    for name in names:  # warm imports, buffers and the page cache
        methods[name](paths[0], size)
    best = {name: [float("inf")] * len(paths) for name in names}
    turn = 0
    for _ in range(repeat):
        for i, path in enumerate(paths):
            turn += 1
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                start = time.perf_counter()
                methods[name](path, size)
                best[name][i] = min(best[name][i], time.perf_counter() - start)
    return {name: len(paths) / sum(seconds) for name, seconds in best.items()}


def _parity(syntax: str, path: Path, size: int) -> tuple[str, float]:
    """(full-size parity against pydicom, mean |Δ| of the read at `size` against the full
    decode + area resize)."""
    ours, ref = read_image(path), read_image(path, fast=False)
    worst = float(np.abs(ours - ref).max())
    exact = worst <= 1e-6
    parity = "exact" if exact else f"max Δ {worst:.4f}"
    if syntax not in _LOSSLESS:
        parity += " (lossy)"
    reduced = float(np.abs(load_image(path, size)[0] - resize(ours, size)).mean())
    return parity, reduced


def run(args: argparse.Namespace, out_dir: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    rows, columns = args.rows, args.columns
    results = []
    for label, syntax, max_bits in SYNTAXES:
        bits = min(args.bits, max_bits)
        if args.only and not any(word.lower() in label.lower() for word in args.only):
            continue
        paths = []
        for i in range(args.n):
            pixels = radiograph(rows, columns, max(bits, 12), rng)
            if bits < 12:  # an 8-bit export of the detector's 12-bit image
                pixels = (pixels >> (12 - bits)).astype(np.uint8)
            paths.append(write(out_dir / f"{syntax}_{i}.dcm", pixels, syntax, bits))
        frames = _frames(paths, syntax)
        methods = {
            "naive": naive,
            "ptxfast": fast,
            "codec": codec_method(syntax, bits, frames, (rows, columns)),
        }
        rates = _time(methods, paths, args.size, args.repeat)
        parity, reduced = _parity(syntax, paths[0], args.size)
        mib = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
        results.append(
            dict(label=label, syntax=str(syntax), bits=bits, mib=mib, parity=parity,
                 reduced_mean_abs=reduced, **rates)
        )  # fmt: skip
        r = results[-1]
        print(
            f"{label:<32}{bits:>4}{mib:>7.2f}{r['naive']:>9.1f}{r['ptxfast']:>9.1f}"
            f"{r['codec']:>9.1f}{r['ptxfast'] / r['codec']:>8.2f}x  {parity}, reduced {reduced:.5f}",
            flush=True,
        )
        for p in paths:
            p.unlink()
    return results


def _one_core() -> str:
    """Pin this process to one CPU and every thread pool to one thread."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    return f"CPU {cpu}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="files per syntax")
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2048)
    parser.add_argument("--bits", type=int, default=12, help="bits stored (8-bit JPEG: 8)")
    parser.add_argument("--size", type=int, default=512, help="output side after resize")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the files")
    parser.add_argument("--only", nargs="*", help="syntaxes whose label holds one of these words")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: a temp dir, removed")
    args = parser.parse_args(argv)
    core = _one_core()
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="ptxfast_decode_bench_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"decode + window + area resize of {args.rows}x{args.columns}, {args.bits} bits stored, "
        f"to {args.size}², {args.n} files x {args.repeat} passes, one core ({core}); "
        f"{platform.processor() or platform.machine()}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; imagecodecs "
        f"{imagecodecs.__version__}, pydicom {pydicom.__version__}"
    )
    print(
        f"{'syntax':<32}{'bits':>4}{'MiB':>7}{'naive':>9}{'ptxfast':>9}{'codec':>9}"
        f"{'pf/codec':>9}  parity (files/s)"
    )
    try:
        run(args, out_dir)
    finally:
        if args.out_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
