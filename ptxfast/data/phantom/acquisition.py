"""From attenuation to stored pixels: the processing tone curve, the detector's grey scale
(white and black levels) and its noise, and the 12-bit quantisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ptxfast.data.phantom.fields import resize

MAX_VALUE = 4095  # 12-bit detector range (BitsStored 12)


def tone_curve(rng: np.random.Generator, A: np.ndarray) -> np.ndarray:
    """Attenuation -> display [0, 1] through a gentle S for contrast, with a faint mottle."""
    a_lo, a_hi = rng.uniform(0.0, 0.04), rng.uniform(0.80, 0.95)
    D = np.clip((A - a_lo) / (a_hi - a_lo), 0.0, 1.0)
    s = rng.uniform(0.0, 0.35)
    D = (1 - s) * D + s * D * D * (3 - 2 * D)
    D += rng.normal(0, 0.006, D.shape).astype(np.float32)  # low-frequency mottle
    return D


@dataclass(frozen=True)
class GreyScale:
    """The detector's levels for one image, in 12-bit units."""

    white: float  # display 1 -> this many 12-bit units above the floor
    air: float  # the level of air outside the body, before the detector noise is added
    noise_k: float  # gain of the triangular noise (sd ≈ 104 before it)


def to_detector(
    rng: np.random.Generator, DV: np.ndarray, size: int
) -> tuple[np.ndarray, GreyScale]:
    """Scale the display image to 12-bit units and upsample it to size×size.

    The scaling happens at the vessel resolution, where it is 4x cheaper than at full size.
    The noise's mean (255 of its units) is taken off the black level here, so `detector_noise`
    only adds.
    """
    white = rng.uniform(3300, 4000)
    black = rng.uniform(40, 250)
    noise_sd = rng.uniform(10, 28)  # 12-bit units
    noise_k = noise_sd / 104.0  # the triangular noise below has sd ≈ 104 before scaling
    DV *= np.float32(white)
    DV += np.float32(black - 255.0 * noise_k)
    DF = resize(DV, size, Image.BILINEAR)
    return DF, GreyScale(white=white, air=black - 255.0 * noise_k, noise_k=noise_k)


def detector_noise(rng: np.random.Generator, DF: np.ndarray, grey: GreyScale) -> np.ndarray:
    """Add the detector noise and quantise to 12 bits (uint16, MONOCHROME2).

    Triangular noise from the two bytes of random uint16s: cheap, and sd ≈ 104 before scaling.
    """
    size = DF.shape[0]
    raw = rng.integers(0, 65536, size * size, dtype=np.uint16).view(np.uint8)
    tri = (raw[0::2].astype(np.int16) + raw[1::2]).reshape(size, size)
    DF += tri * np.float32(grey.noise_k)
    np.clip(DF, 0, MAX_VALUE, out=DF)
    return DF.astype(np.uint16)
