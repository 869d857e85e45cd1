"""Decode + resize throughput: ptxfast's reader against the naive pydicom + Pillow path.

Writes N synthetic 1024x1024 DICOMs (16 bits allocated, 12 stored, uncompressed, smooth
content with window tags, like a CR/DX export), then times, in one process:

  naive    pydicom.dcmread + ds.pixel_array + astype(float32) + Pillow resize
  ptxfast  ptxfast.data.dicom.load_image(path, size): window applied, area resize
  floor    np.fromfile of the whole file + one float32 pass (no header, no resize)

Each of --repeat passes runs every method over all the files (page cache warm), in a
rotating order so load from other processes on a shared machine hits them alike:
files/s is the best pass, "vs naive" the median over passes of the ratio within a pass.

    python bench/decode_bench.py --n 100 --size 512
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from ptxfast.data.dicom import load_image


def write_synthetic(
    out_dir: Path,
    n: int,
    side: int = 1024,
    seed: int = 0,
    window: tuple[float, float] = (2048, 2400),
) -> list[Path]:
    """N uncompressed 16-bit (12 stored) DICOMs of smooth random content with a window."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        fx, fy, phase = rng.uniform(2, 8), rng.uniform(2, 8), rng.uniform(0, 2 * np.pi)
        content = np.sin(fx * x + phase) * np.cos(fy * y) * 1400 + 2048
        content += rng.normal(0, 30, (side, side))
        pixels = np.clip(content, 0, 4095).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = DigitalXRayImageStorageForPresentation
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientID, ds.Modality = f"P{i}", "DX"
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        # A window narrower than the content, so clipping is part of the work.
        # Integer center/width (the usual case) put ptxfast's clip bounds on integers.
        ds.WindowCenter, ds.WindowWidth = window
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
        ds.PixelData = pixels.tobytes()
        path = out_dir / f"bench_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def naive(path: Path, size: int) -> np.ndarray:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float32)
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))


def fast(path: Path, size: int) -> np.ndarray:
    return load_image(path, size)[0]


def floor(path: Path, size: int) -> np.ndarray:
    # The pixels are the file's last 2 MiB: read everything, convert them once.
    return np.fromfile(path, dtype=np.uint8)[-(1 << 21) :].view(np.uint16).astype(np.float32)


def run(
    n: int, size: int, out_dir: Path, repeat: int, window: tuple[float, float] = (2048, 2400)
) -> dict[str, dict[str, float]]:
    """Write the files and time each method; returns per-method files/s and the ratio.

    Each pass times every method over all the files, one method after the other in a
    rotating order, so load from other processes on a shared machine hits them alike.
    files/s is the best pass; "vs naive" is the median over passes of the ratio within
    a pass.
    """
    paths = write_synthetic(out_dir, n, window=window)
    methods: dict[str, Callable[[Path, int], np.ndarray]] = {
        "naive": naive,
        "ptxfast": fast,
        "floor": floor,
    }
    names = list(methods)
    for name in names:  # warm the page cache, imports and buffers
        for path in paths:
            methods[name](path, size)
    passes = []
    for r in range(repeat):
        seconds = {}
        for name in names[r % 3 :] + names[: r % 3]:
            start = time.perf_counter()
            for path in paths:
                methods[name](path, size)
            seconds[name] = time.perf_counter() - start
        passes.append(seconds)
    result = {}
    for name in names:
        best = min(p[name] for p in passes)
        ratio = statistics.median(p["naive"] / p[name] for p in passes)
        result[name] = {"files_per_s": n / best, "ms_per_file": 1000 * best / n, "vs_naive": ratio}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="number of DICOM files (2 MiB each)")
    parser.add_argument("--size", type=int, default=512, help="output side after resize")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where to write the files (default: a temp dir, removed after)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed passes over the files")
    parser.add_argument(
        "--fractional-window",
        action="store_true",
        help="window 2048.3/2400.7 instead of 2048/2400: clip bounds off the integer grid, "
        "so ptxfast takes its float32 variant instead of integer block sums",
    )
    args = parser.parse_args(argv)
    window = (2048.3, 2400.7) if args.fractional_window else (2048, 2400)

    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="ptxfast_decode_bench_"))
    try:
        result = run(args.n, args.size, out_dir, args.repeat, window)
    finally:
        if args.out_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)

    print(
        f"decode + resize of 1024x1024 16-bit (12 stored) DICOM to {args.size}x{args.size}: "
        f"window {window[0]}/{window[1]}, {args.n} files x {args.repeat} passes, one process"
    )
    print(f"{'method':<10}{'files/s':>10}{'ms/file':>10}{'vs naive':>10}")
    for name, row in result.items():
        print(
            f"{name:<10}{row['files_per_s']:>10.1f}{row['ms_per_file']:>10.2f}{row['vs_naive']:>9.1f}x"
        )


if __name__ == "__main__":
    main()
