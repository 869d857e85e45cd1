"""Fields on a pixel grid: soft steps, soft minimum, resampling, blur, tabulated profiles, and
the pose that maps the anatomy coordinates every drawing stage uses onto the image.

Pure functions over float32 arrays; every stage of the phantom builds on them, so a change
here moves every pixel (the pinned phantoms in tests/test_synth_pinned.py say so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


def sig(t: np.ndarray) -> np.ndarray:
    """Logistic step (0 -> 1) written with tanh, which numpy evaluates fast in float32."""
    return 0.5 + 0.5 * np.tanh(t)


def smooth(t: np.ndarray) -> np.ndarray:
    """Smoothstep of t clipped to [0, 1]."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smin(margins: list[np.ndarray], k: float) -> np.ndarray:
    """Soft minimum (rounded corners where two margins meet); exact where one dominates."""
    lo = margins[0]
    for m in margins[1:]:
        lo = np.minimum(lo, m)
    acc = np.zeros_like(lo)
    for m in margins:
        acc += np.exp(-(m - lo) / k)
    return lo - k * np.log(acc)


def resize(a: np.ndarray, n: int, resample: int = Image.BICUBIC) -> np.ndarray:
    """Resample a float32 square array to n×n (PIL: fast, pixel-centre aligned)."""
    if a.shape[0] == n:
        return np.array(a, dtype=np.float32)
    return np.array(Image.fromarray(a).resize((n, n), resample), dtype=np.float32)


def resize_box(a: np.ndarray, n: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """The (r0:r1, c0:c1) window of `resize(a, n, BILINEAR)` without resizing the rest."""
    r0, r1, c0, c1 = box
    s = a.shape[0] / n
    img = Image.fromarray(a).resize(
        (c1 - c0, r1 - r0), Image.BILINEAR, box=(c0 * s, r0 * s, c1 * s, r1 * s)
    )
    return np.array(img, dtype=np.float32)


def blur121(a: np.ndarray, passes: int = 1) -> np.ndarray:
    """[1 2 1]/4 separable blur in place-friendly numpy (≈ Gaussian σ 0.7 px per pass)."""
    for _ in range(passes):
        b = a.copy()
        b[1:-1] = 0.5 * a[1:-1] + 0.25 * (a[:-2] + a[2:])
        c = b.copy()
        c[:, 1:-1] = 0.5 * b[:, 1:-1] + 0.25 * (b[:, :-2] + b[:, 2:])
        a = c
    return a


def profile_table(fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Tabulate a profile on [-2, 2] in steps of 1/64 (lookups beat evaluating exp/sqrt)."""
    x = np.arange(-128, 129, dtype=np.float64) / 64.0
    return fn(x).astype(np.float32)


def lookup(table: np.ndarray, d: np.ndarray) -> np.ndarray:
    """table(d) for d in [-2, 2] (0 outside), by nearest sample."""
    idx = np.clip(d * 64.0 + 128.5, 0, 256).astype(np.intp)
    out = table[idx]
    out[np.abs(d) >= 2.0] = 0.0
    return out


@dataclass(frozen=True)
class Pose:
    """Anatomy -> image similarity transform about the image centre (patient positioning)."""

    scale: float
    rot: float  # radians
    dx: float
    dy: float

    def to_image(self, x, y):
        """Anatomy coordinates -> normalised image coordinates."""
        c, s = math.cos(self.rot), math.sin(self.rot)
        x, y = np.asarray(x) - 0.5, np.asarray(y) - 0.5
        return (
            0.5 + self.dx + self.scale * (c * x - s * y),
            0.5 + self.dy + self.scale * (s * x + c * y),
        )

    def to_anatomy(self, px, py):
        """Normalised image coordinates -> anatomy coordinates."""
        c, s = math.cos(self.rot), math.sin(self.rot)
        x = (np.asarray(px) - 0.5 - self.dx) / self.scale
        y = (np.asarray(py) - 0.5 - self.dy) / self.scale
        return 0.5 + c * x + s * y, 0.5 - s * x + c * y

    def grid(self, n: int, rows: slice = slice(None), cols: slice = slice(None)):
        """Anatomy coordinates (X, Y) of the pixel centres of an n×n image window."""
        p = (np.arange(n, dtype=np.float32) + 0.5) / n
        X, Y = self.to_anatomy(p[cols][None, :], p[rows][:, None])
        return X.astype(np.float32), Y.astype(np.float32)
