"""PNG and JPEG (and whatever else Pillow opens) to float32 gray in [0, 1], air dark.

The pixel limit (`MAX_PIXELS`) is checked on the size the header claims, before decoding;
EXIF orientation is applied; values are scaled by the bit depth, colour turned into luma.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from ptxfast.data.dicom.info import ImageInfo, describe, read_error
from ptxfast.data.dicom.limits import MAX_PIXELS
from ptxfast.data.dicom.pixels import luma

__all__ = ["load_pillow"]


def load_pillow(f: BinaryIO, path: Path) -> tuple[np.ndarray, ImageInfo]:
    """The image in `f` (named `path` in errors) as float32 gray and its `ImageInfo`."""
    try:
        with warnings.catch_warnings():
            # We apply our own (lower) pixel limit just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(f)
    except Image.DecompressionBombError as exc:
        raise read_error(
            path, f"image header claims more pixels than the {MAX_PIXELS:,} pixel limit"
        ) from exc
    except Exception as exc:  # UnidentifiedImageError, OSError, ...
        raise read_error(path, "neither DICOM nor an image format Pillow reads") from exc
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise read_error(
            path,
            f"{im.format} header claims {height}x{width} pixels, over the {MAX_PIXELS:,} pixel limit",
        )
    try:
        im.load()
        im = ImageOps.exif_transpose(im)
        img, photometric = _pil_gray(im)
    except Exception as exc:
        raise read_error(path, f"corrupt or truncated {im.format} image ({describe(exc)})") from exc
    return img, ImageInfo(path=path, rows=height, columns=width, photometric=photometric)


def _pil_gray(im) -> tuple[np.ndarray, str]:
    """A Pillow image as float32 gray in [0, 1], scaled by its bit depth."""
    mode = im.mode
    if mode.startswith("I;16"):
        img = np.asarray(im).astype(np.float32) / 65535.0
    elif mode == "I":  # 32-bit ints: Pillow's mode for some 16-bit PNG/TIFF
        img = np.asarray(im).astype(np.float32) / 65535.0
    elif mode == "F":
        img = np.asarray(im, dtype=np.float32)
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    elif mode in ("1", "L", "LA"):
        img = np.asarray(im.getchannel(0), dtype=np.float32)
        if mode != "1":
            img /= 255.0
    else:
        return luma(np.asarray(im.convert("RGB")), 255.0), "RGB"
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False), "MONOCHROME2"
