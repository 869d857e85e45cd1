"""The pixel rules, as pydicom defines them: modality LUT, VOI LUT or window, photometric.

`decode_full` decodes the first frame with pydicom and applies its LUT functions (rescale,
VOI LUT or window, else the frame's min/max), inverts MONOCHROME1 and turns colour (RGB, YBR,
PALETTE COLOR) into luma. It reads every transfer syntax pydicom and the pylibjpeg plugins
decode; the fast path (`native`) gives the same pixels for grayscale frames, and falls back here.
"""

from __future__ import annotations

import warnings

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    pixel_array,
)

from ptxfast.data.dicom.tags import int_tag, window_of

__all__ = ["decode_full", "luma"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's "L"


def decode_full(ds: Dataset) -> np.ndarray:
    """pydicom's decode of the first frame, then its LUT functions, to float32 [0, 1]."""
    # index=0 decodes only the first frame; YBR is converted to RGB by pydicom.
    arr = pixel_array(ds, index=0)
    photometric = str(ds.PhotometricInterpretation).strip()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return luma(rgb, np.iinfo(rgb.dtype).max)
    if arr.ndim == 3:
        bits = int_tag(ds, "BitsStored") or arr.dtype.itemsize * 8
        return luma(arr, 2**bits - 1)
    img = _grayscale(arr, ds)
    if photometric == "MONOCHROME1":
        img = 1.0 - img
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def luma(rgb: np.ndarray, top: float) -> np.ndarray:
    """RGB values up to `top` as float32 gray in [0, 1] (ITU-R BT.601 weights)."""
    gray = rgb.astype(np.float32) @ _LUMA
    gray *= np.float32(1.0 / top)
    return np.clip(gray, 0.0, 1.0, out=gray)


def _grayscale(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT, then VOI LUT or window or min/max, mapped to [0, 1] (float64)."""
    values = apply_modality_lut(arr, ds)
    voi = ds.get("VOILUTSequence")
    if voi and "LUTDescriptor" in voi[0] and "LUTData" in voi[0]:
        if values.dtype.kind == "f":
            # LUT inputs are integers; rescale output is integral in practice.
            values = np.rint(values).astype(np.int64)
        out = apply_voi(values, ds, index=0).astype(np.float64)
        # The LUT's output range is set by its bit depth; some files under-declare it.
        top = max(2.0 ** int(voi[0].LUTDescriptor[2]) - 1, float(out.max()))
        return out / top
    if window_of(ds) is not None:
        try:
            out = apply_windowing(values, ds, index=0)
        except ValueError as exc:
            warnings.warn(f"ignoring the window ({exc}); using the frame's min/max", stacklevel=4)
        else:
            # The window maps onto [y_min, y_max], a range pydicom derives from the header;
            # two extreme probes give it back without re-deriving the rule here.
            with np.errstate(over="ignore"):
                y_min, y_max = apply_windowing(np.array([-1e300, 1e300]), ds, index=0)
            if y_max == y_min:
                return np.zeros(out.shape)
            return (out - y_min) / (y_max - y_min)
    values = values.astype(np.float64)
    lo, hi = values.min(), values.max()
    if hi == lo:
        return np.zeros(values.shape)
    return (values - lo) / (hi - lo)
