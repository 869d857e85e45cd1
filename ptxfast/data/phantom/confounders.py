"""Confounders drawn at full resolution: chest tubes, ECG leads, skin folds and side markers.

They are what a detector must not take for a pneumothorax (a skin fold mimics the visceral
pleural line) and what it must not learn as one (a chest drain goes with a treated PTX).
Their rates are the same with and without a pneumothorax; each can be forced on or off.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ptxfast.data.phantom.anatomy import SIDES, Chest, Lung, Patient
from ptxfast.data.phantom.fields import Pose, sig, smooth


def _bezier(points: np.ndarray, n: int) -> np.ndarray:
    """Points along a quadratic or cubic Bézier curve with control `points` (k×2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    if len(points) == 3:
        p0, p1, p2 = points
        return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    p0, p1, p2, p3 = points
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


@functools.lru_cache(maxsize=8)
def _font(height_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's bundled font at a pixel size (loading it costs more than drawing a letter)."""
    return ImageFont.load_default(size=height_px)


class _Overlay:
    """Full-resolution canvas for drawn objects (tubes, wires, electrodes, markers)."""

    def __init__(self, n: int, pose: Pose):
        self.n, self.pose = n, pose
        # 8-bit canvas: PIL blurs it in C; objects are bright enough that 1/255 steps vanish.
        self.img = Image.new("L", (n, n), 0)
        self.draw = ImageDraw.Draw(self.img)
        self.box: list[float] | None = None

    def px(self, pts: np.ndarray) -> list[tuple[float, float]]:
        """Anatomy points (k×2) -> pixel coordinates, growing the dirty box."""
        x, y = self.pose.to_image(pts[:, 0], pts[:, 1])
        x, y = x * self.n - 0.5, y * self.n - 0.5
        self._grow(float(x.min()), float(y.min()), float(x.max()), float(y.max()))
        return list(zip(x.tolist(), y.tolist(), strict=True))

    def _grow(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Grow the dirty box (pixels) to hold the rectangle x0..x1, y0..y1."""
        b = self.box or [x0, y0, x1, y1]
        self.box = [min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1)]

    def line(self, pts: np.ndarray, width: float, value: float) -> None:
        """A polyline through anatomy points, `width` pixels wide, at `value` (0..1)."""
        fill = int(round(value * 255))
        self.draw.line(self.px(pts), fill=fill, width=max(1, int(round(width))), joint="curve")

    def disk(self, center: np.ndarray, radius_px: float, value: float, ring: float = 0.0) -> None:
        """A filled disk (or, with `ring`, a circle that wide) about an anatomy point."""
        (x, y), r = self.px(center[None, :])[0], radius_px
        self._grow(x - r, y - r, x + r, y + r)
        box = (x - r, y - r, x + r, y + r)
        fill = int(round(value * 255))
        if ring:
            self.draw.ellipse(box, outline=fill, width=max(1, int(round(ring))))
        else:
            self.draw.ellipse(box, fill=fill)

    def text(self, xy_px: tuple[float, float], letter: str, height_px: int, value: float) -> None:
        """A letter with its top-left corner at `xy_px` (pixels), `height_px` tall."""
        font = _font(max(8, height_px))
        self.draw.text(xy_px, letter, fill=int(round(value * 255)), font=font)
        self._grow(*self.draw.textbbox(xy_px, letter, font=font))

    def add_to(self, image: np.ndarray, scale: float) -> None:
        """Soften the drawn pixels (PIL does not antialias) and add them to `image`."""
        if self.box is None:
            return
        n = self.n
        c0, r0 = max(0, int(self.box[0]) - 8), max(0, int(self.box[1]) - 8)
        c1, r1 = min(n, int(self.box[2]) + 9), min(n, int(self.box[3]) + 9)
        if c1 <= c0 or r1 <= r0:
            return
        # A fractional box blur is a [1 2 1]-like kernel; it costs a third of PIL's Gaussian.
        crop = self.img.crop((c0, r0, c1, r1)).filter(
            ImageFilter.BoxBlur(0.5 + 0.5 * min(1.0, n / 1024))
        )
        image[r0:r1, c0:c1] += np.asarray(crop, dtype=np.float32) * np.float32(scale / 255.0)


def _chest_tube(rng: np.random.Generator, ov: _Overlay, lung: Lung, cx: float, size: int) -> None:
    """A drain entering through the lateral chest wall and curving up to the apex."""
    sg, w = lung.sg, lung.w
    entry = np.array([cx + sg * (w + 0.03), lung.cp - rng.uniform(0.06, 0.16)])
    outside = np.array([cx + sg * rng.uniform(0.52, 0.62), entry[1] + rng.uniform(0.05, 0.25)])
    mid = np.array([cx + sg * w * rng.uniform(0.75, 0.92), lung.apex + rng.uniform(0.25, 0.35)])
    tip = np.array([cx + sg * w * rng.uniform(0.35, 0.65), lung.apex + rng.uniform(0.05, 0.12)])
    inside = _bezier(np.stack([entry, mid, tip]), 60)
    outer = _bezier(np.stack([outside, (outside + entry) / 2 + [0, 0.03], entry]), 30)
    path = np.concatenate([outer, inside[1:]])
    wpx = rng.uniform(8, 16) * size / 1024
    ov.line(path, wpx, 0.13)
    if wpx >= 4:
        ov.line(path, wpx * 0.45, 0.07)  # the lumen is less dense than the walls
    d = np.gradient(path, axis=0)
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1) / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9)
    stripe = path + nrm * (0.3 * wpx / size)
    ov.line(stripe[:-4], max(1.0, wpx * 0.18), 0.42)  # the radio-opaque line


def _ecg_leads(rng: np.random.Generator, ov: _Overlay, pat: Patient, size: int, k: int) -> None:
    """k electrodes (metal snap in a foam ring) with wires trailing off the image."""
    spots = [
        (-0.30, pat.apex_y - 0.02),
        (0.30, pat.apex_y - 0.02),
        (-0.28, pat.cp_y + 0.04),
        (0.30, pat.cp_y + 0.06),
        (0.10, pat.cp_y - 0.10),
    ]
    pick = rng.permutation(len(spots))[:k]
    r = rng.uniform(9, 13) * size / 1024
    for i in pick:
        du, y = spots[i]
        c = np.array([pat.cx + du + rng.normal(0, 0.025), y + rng.normal(0, 0.025)])
        ov.disk(c, r, 0.10, ring=max(1.0, r * 0.25))
        ov.disk(c, r * 0.35, 0.55)
        # The wire leaves the electrode and loops off the nearest side of the image.
        out = np.array([0.0 if c[0] < 0.5 else 1.0, c[1] + rng.uniform(-0.3, 0.3)])
        bend1 = c + rng.normal(0, 0.12, 2)
        bend2 = out + rng.normal(0, 0.12, 2)
        wire = _bezier(np.stack([c, bend1, bend2, out + (out - c) * 0.2]), 80)
        ov.line(wire, max(1.0, rng.uniform(2.0, 3.5) * size / 1024), rng.uniform(0.22, 0.35))


def _arc_field(
    pose: Pose, size: int, arc: dict, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Signed radial distance (px) to a circular arc and its along-arc weight, in a window."""
    r0, r1, c0, c1 = box
    X, Y = pose.grid(size, slice(r0, r1), slice(c0, c1))
    dx, dy = X - arc["cx"], Y - arc["cy"]
    dr = (np.sqrt(dx * dx + dy * dy) - arc["r"]) * size * pose.scale
    phi = np.arctan2(dy, dx)
    mid, half = arc["phi"], arc["half"]
    t = np.abs((phi - mid + np.pi) % (2 * np.pi) - np.pi) / half
    return dr, smooth((1.0 - t) * 4.0)


def _arc_through(top: np.ndarray, mid: np.ndarray, bot: np.ndarray) -> dict:
    """The circular arc from `top` through `mid` to `bot`: centre, radius, mid-angle, half-span."""
    (ax, ay), (bx, by), (qx, qy) = top, mid, bot
    d = 2 * (ax * (by - qy) + bx * (qy - ay) + qx * (ay - by))
    ux = (
        (ax**2 + ay**2) * (by - qy) + (bx**2 + by**2) * (qy - ay) + (qx**2 + qy**2) * (ay - by)
    ) / d
    uy = (
        (ax**2 + ay**2) * (qx - bx) + (bx**2 + by**2) * (ax - qx) + (qx**2 + qy**2) * (bx - ax)
    ) / d
    rad = math.hypot(ax - ux, ay - uy)
    pa, pb = math.atan2(ay - uy, ax - ux), math.atan2(qy - uy, qx - ux)
    span = (pb - pa + math.pi) % (2 * math.pi) - math.pi
    return {"cx": ux, "cy": uy, "r": rad, "phi": pa + span / 2, "half": abs(span) / 2}


def _skin_fold(
    rng: np.random.Generator,
    pose: Pose,
    lung: Lung,
    cx: float,
    size: int,
    image: np.ndarray,
    scale: float,
) -> None:
    """A skin fold: a long curved edge with a thin line that runs past the lung's edge.

    It mimics a visceral pleural line, but lung markings continue on both sides of it and it
    leaves the lung outline (below the costophrenic angle or into the axilla).
    """
    sg, w = lung.sg, lung.w
    top = np.array([cx + sg * w * rng.uniform(0.65, 0.85), lung.apex + rng.uniform(0.12, 0.3)])
    bot = np.array([cx + sg * w * rng.uniform(0.85, 1.1), lung.cp + rng.uniform(0.04, 0.12)])
    chord = bot - top
    mid = (top + bot) / 2 + np.array([sg * abs(chord[1]), 0.0]) * rng.uniform(0.08, 0.18)
    arc = _arc_through(top, mid, bot)
    pts = np.stack([top, mid, bot])
    ix, iy = pose.to_image(pts[:, 0], pts[:, 1])
    m = int(0.03 * size) + 4
    c0, c1 = max(0, int(ix.min() * size) - m), min(size, int(ix.max() * size) + m)
    r0, r1 = max(0, int(iy.min() * size) - m), min(size, int(iy.max() * size) + m)
    if c1 <= c0 or r1 <= r0:
        return
    dr, along = _arc_field(pose, size, arc, (r0, r1, c0, c1))
    sigma = max(0.7, 1.1 * size / 1024)
    decay = rng.uniform(10, 25) * size / 1024
    # Lateral (outer) side of the fold is dr > 0: sharp edge there, density fading inward.
    edge = np.where(dr < 0, np.exp(dr / decay), 0.0) * sig(-dr / sigma)
    line = np.exp(-((dr / sigma) ** 2))
    amp = rng.uniform(0.05, 0.09)
    image[r0:r1, c0:c1] += (amp * scale * (0.6 * line + 0.7 * edge) * along).astype(np.float32)


@dataclass(frozen=True)
class Confounders:
    """Which confounders an image shows (patient sides, electrode count, marker letter)."""

    chest_tube: str | None
    skin_fold: str | None
    ecg_leads: int
    marker: str | None


def _marker(rng: np.random.Generator, ov: _Overlay, size: int) -> str | None:
    """The burned-in side marker letter, in a top corner, on most films."""
    if rng.random() >= 0.6:
        return None
    marker = str(rng.choice(["R", "L"]))
    hpx = int(0.045 * size)
    x = (0.06 if marker == "R" else 0.89) * size + rng.normal(0, 0.01) * size
    ov.text((x, rng.uniform(0.03, 0.08) * size), marker, hpx, 0.9)
    return marker


def draw_confounders(
    rng: np.random.Generator,
    ch: Chest,
    DF: np.ndarray,
    scale: float,
    chest_tube: bool | None,
    ecg: bool | None,
    skin_fold: bool | None,
) -> Confounders:
    """Draw the confounders into the full-size image `DF` (12-bit units, `scale` the gain).

    Each is drawn at its rate (higher on AP films) unless forced with True or False. The
    decisions always consume the main stream and the drawing has its own, so forcing one
    changes nothing else.
    """
    size = DF.shape[0]
    draws = rng.random(3)
    conf_rng = np.random.default_rng(rng.integers(0, 2**63))
    ov = _Overlay(size, ch.pose)
    tube_side = None
    if chest_tube if chest_tube is not None else draws[0] < (0.2 if ch.ap else 0.1):
        i = int(conf_rng.integers(2))
        tube_side = SIDES[i]
        _chest_tube(conf_rng, ov, ch.lungs[i], ch.cx, size)
    n_ecg = 0
    if ecg if ecg is not None else draws[1] < (0.5 if ch.ap else 0.2):
        n_ecg = int(conf_rng.integers(2, 6))
        _ecg_leads(conf_rng, ov, ch.pat, size, n_ecg)
    fold_side = None
    if skin_fold if skin_fold is not None else draws[2] < 0.15:
        i = int(conf_rng.integers(2))
        fold_side = SIDES[i]
        _skin_fold(conf_rng, ch.pose, ch.lungs[i], ch.cx, size, DF, scale)
    marker = _marker(rng, ov, size)
    ov.add_to(DF, scale)
    return Confounders(tube_side, fold_side, n_ecg, marker)
