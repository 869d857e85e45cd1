"""Synthetic frontal chest radiographs with pneumothoraces: the pure, in-memory generator.

`make_phantom(rng, size, n_ptx)` returns a 12-bit MONOCHROME2 image (uint16), one bool mask
per pneumothorax and a `PhantomMeta` with the findings. Nothing here touches the disk; the
dataset writer (`ptxfast.data.synth`) turns phantoms into DICOM files and CSV rows.

The picture is built in three resolutions so a 1024² image costs tens of milliseconds:
anatomy (body, lungs, heart, mediastinum, spine, ribs, clavicles, diaphragm) at up to 256²
with vectorised numpy, lung vessels drawn as a branching tree at up to 512², then smooth
upsampling to the full size where the thin structures are added: the visceral pleural line,
skin folds, chest tubes, ECG leads, side markers, and the detector noise.

Shapes are analytic functions of "anatomy" coordinates (x right, y down, both in [0, 1] of the
image), mapped to the image by a small per-image pose (shift, scale, rotation), so every
resolution draws the same body. Each lung is the soft intersection of margins (apex curve,
lateral wall, diaphragm dome, mediastinum, heart); a pneumothorax is the band of the lung within
a depth d(θ) of the chest wall, where θ is the direction from the hilum, so it is a crescent
at the apex or along the lateral wall and a rim around a collapsed lung when large.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "MAX_VALUE",
    "Patient",
    "Pneumothorax",
    "PhantomMeta",
    "make_patient",
    "make_phantom",
]

MAX_VALUE = 4095  # 12-bit detector range (BitsStored 12)
_ANATOMY_RES = 256  # the body is smooth: 256² carries all of it
_VESSEL_RES = 512  # vessels down to ~1 px at 512² before the final upsample
_SIDES = ("right", "left")  # patient sides; the patient's right lung is on the image left


@dataclass(frozen=True)
class Patient:
    """Body habitus shared by all images of one patient (anatomy coordinates, [0, 1])."""

    sex: str  # "F" or "M"; women get breast shadows over the lower zones
    cx: float  # body midline
    body_hw: float  # half-width of the torso at chest level
    apex_y: float  # lung apices
    cp_y: float  # right costophrenic angle; the left hemidiaphragm sits a little lower
    lung_w: float  # lateral extent of each lung from the midline
    dome_h: float  # height of the diaphragm domes above the costophrenic angles
    med_w: float  # half-width of the upper mediastinum
    heart_rx: float  # heart semi-axes (cardiothoracic ratio ~ heart_rx / lung_w)
    heart_ry: float
    heart_tilt: float  # degrees; the cardiac apex points down and to the patient's left
    rib_gap: float  # spacing of the posterior ribs at the spine
    lung_dark: float  # how much less the aerated lungs attenuate than soft tissue


@dataclass(frozen=True)
class Pneumothorax:
    """One pneumothorax as drawn: which lung, where, how deep, how many mask pixels."""

    side: str  # patient side, "right" (image left) or "left" (image right)
    site: str  # "apical", "apicolateral", "lateral", "basal" or "large"
    size: str  # "small", "moderate" or "large", from the rim depth
    depth_mm: float  # maximal rim depth between chest wall and visceral pleura
    area_px: int  # mask pixels at the image's size


@dataclass
class PhantomMeta:
    """What a phantom shows; the dataset writer turns it into a report and DICOM tags."""

    patient: Patient
    size: int
    pixel_spacing_mm: float
    view: str  # "PA" or "AP"
    pneumothoraces: list[Pneumothorax] = field(default_factory=list)
    chest_tube: str | None = None  # patient side of a chest drain, if any
    skin_fold: str | None = None  # patient side of a skin fold, if any
    ecg_leads: int = 0  # number of ECG electrodes (with their wires)
    marker: str | None = None  # burned-in side marker letter


# ----------------------------------------------------------------------------- helpers


def _sig(t: np.ndarray) -> np.ndarray:
    """Logistic step (0 -> 1) written with tanh, which numpy evaluates fast in float32."""
    return 0.5 + 0.5 * np.tanh(t)


def _smooth(t: np.ndarray) -> np.ndarray:
    """Smoothstep of t clipped to [0, 1]."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smin(margins: list[np.ndarray], k: float) -> np.ndarray:
    """Soft minimum (rounded corners where two margins meet); exact where one dominates."""
    lo = margins[0]
    for m in margins[1:]:
        lo = np.minimum(lo, m)
    acc = np.zeros_like(lo)
    for m in margins:
        acc += np.exp(-(m - lo) / k)
    return lo - k * np.log(acc)


def _resize(a: np.ndarray, n: int, resample=Image.BICUBIC) -> np.ndarray:
    """Resample a float32 square array to n×n (PIL: fast, pixel-centre aligned)."""
    if a.shape[0] == n:
        return np.array(a, dtype=np.float32)
    return np.array(Image.fromarray(a).resize((n, n), resample), dtype=np.float32)


def _resize_box(a: np.ndarray, n: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """The (r0:r1, c0:c1) window of `_resize(a, n, BILINEAR)` without resizing the rest."""
    r0, r1, c0, c1 = box
    s = a.shape[0] / n
    img = Image.fromarray(a).resize(
        (c1 - c0, r1 - r0), Image.BILINEAR, box=(c0 * s, r0 * s, c1 * s, r1 * s)
    )
    return np.array(img, dtype=np.float32)


def _blur121(a: np.ndarray, passes: int = 1) -> np.ndarray:
    """[1 2 1]/4 separable blur in place-friendly numpy (≈ Gaussian σ 0.7 px per pass)."""
    for _ in range(passes):
        b = a.copy()
        b[1:-1] = 0.5 * a[1:-1] + 0.25 * (a[:-2] + a[2:])
        c = b.copy()
        c[:, 1:-1] = 0.5 * b[:, 1:-1] + 0.25 * (b[:, :-2] + b[:, 2:])
        a = c
    return a


@dataclass(frozen=True)
class _Pose:
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


# ----------------------------------------------------------------------------- anatomy


def make_patient(rng: np.random.Generator) -> Patient:
    """Draw one patient's habitus; all images of the patient share it (with small jitter)."""
    apex = rng.uniform(0.11, 0.17)
    cp = apex + rng.uniform(0.52, 0.62)
    lung_w = rng.uniform(0.30, 0.36)
    return Patient(
        sex=str(rng.choice(["F", "M"])),
        cx=rng.uniform(0.48, 0.52),
        body_hw=min(0.49, lung_w + rng.uniform(0.07, 0.12)),
        apex_y=apex,
        cp_y=cp,
        lung_w=lung_w,
        dome_h=rng.uniform(0.06, 0.10),
        med_w=rng.uniform(0.052, 0.068),
        heart_rx=lung_w * rng.uniform(0.40, 0.55),
        heart_ry=rng.uniform(0.10, 0.13),
        heart_tilt=rng.uniform(15.0, 32.0),
        rib_gap=(cp - apex) * rng.uniform(0.088, 0.100),
        lung_dark=rng.uniform(0.30, 0.38),
    )


@dataclass(frozen=True)
class _Lung:
    """One lung's outline parameters; u is the distance from the midline (lateral positive)."""

    sg: int  # -1: image left (patient right), +1: image right (patient left)
    w: float
    apex: float
    cp: float
    dome_h: float
    med_w: float
    knob: float  # aortic knob bulge of the mediastinum (left lung only)
    knob_y: float
    hilum_u: float
    hilum_y: float


@dataclass(frozen=True)
class _Heart:
    x: float
    y: float
    rx: float
    ry: float
    tilt: float  # radians


def _dome_y(lung: _Lung, u):
    """Diaphragm height under the lung (y grows downward; the dome peaks mid-lung and falls
    steeply into the costophrenic angle at the lateral wall)."""
    t = (u - 0.45 * lung.w) / (0.55 * lung.w)
    return lung.cp - lung.dome_h * np.clip(1.0 - t * t, 0.0, 1.0)


def _med_u(lung: _Lung, y):
    """Half-width of the mediastinum at height y on this lung's side."""
    m = lung.med_w + 0.012 * np.clip((y - lung.apex) / 0.3, 0.0, 1.0)
    if lung.knob:
        m = m + lung.knob * np.exp(-(((y - lung.knob_y) / 0.035) ** 2))
    return m


def _heart_margin(heart: _Heart, x, y):
    """Approximate distance outside the cardiac silhouette (negative inside)."""
    c, s = math.cos(heart.tilt), math.sin(heart.tilt)
    dx, dy = x - heart.x, y - heart.y
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    r = np.sqrt((xr / heart.rx) ** 2 + (yr / heart.ry) ** 2)
    return (r - 1.0) * min(heart.rx, heart.ry)


def _lung_margins(lung: _Lung, heart: _Heart, cx: float, x, y):
    """(inner, wall): soft distance inside the lung outline and to its chest-wall part.

    `inner` > 0 inside the lung. `wall` measures only the parietal boundary (apex, lateral
    wall, diaphragm), so a pneumothorax rims the chest wall, not the mediastinum.
    """
    u = lung.sg * (x - cx)
    un = (u - 0.42 * lung.w) / lung.w
    top = y - (lung.apex + 0.85 * un * un)
    span = lung.cp - lung.apex
    t = (y - (lung.apex + 0.62 * span)) / span
    lateral = lung.w * (1.0 - 0.10 * t * t) - u
    dome = _dome_y(lung, u) - y
    wall = _smin([top, lateral, dome], 0.008)
    medial = u - _med_u(lung, y)
    heart = _heart_margin(heart, x, y)
    inner = _smin([wall, medial, heart], 0.006)
    return inner, wall


def _angle_deg(lung: _Lung, cx: float, x, y):
    """Direction from the hilum in degrees: 0 lateral, 90 up (apex), -90 down."""
    u = lung.sg * (x - cx)
    return np.degrees(np.arctan2(lung.hilum_y - y, u - lung.hilum_u))


def _plateau(theta, center: float, half: float):
    """1 over the middle of [center - half, center + half], tapering to 0 at its ends."""
    t = np.abs(theta - center) / half
    return _smooth((1.0 - t) * 2.5)


def _profile_table(fn) -> np.ndarray:
    """Tabulate a profile on [-2, 2] in steps of 1/64 (lookups beat evaluating exp/sqrt)."""
    x = np.arange(-128, 129, dtype=np.float64) / 64.0
    return fn(x).astype(np.float32)


# A rib seen end-on: a cylinder of cancellous bone (sqrt chord) with a brighter cortex.
_RIB_PROFILE = _profile_table(
    lambda d: (
        0.55 * np.sqrt(np.clip(1 - d * d, 0, 1)) + 0.45 * np.exp(-(((np.abs(d) - 0.85) / 0.2) ** 2))
    )
)
_GAUSS_PROFILE = _profile_table(lambda d: np.exp(-d * d) * (np.abs(d) < 1.95))


def _lookup(table: np.ndarray, d: np.ndarray) -> np.ndarray:
    """table(d) for d in [-2, 2] (0 outside), by nearest sample."""
    idx = np.clip(d * 64.0 + 128.5, 0, 256).astype(np.intp)
    out = table[idx]
    out[np.abs(d) >= 2.0] = 0.0
    return out


def _rib_pos(k, gap: float):
    """Offset of rib k below the first at the spine; the spacing widens down the chest."""
    return gap * k * (1.0 + 0.03 * k)


def _nearest_rib(t: np.ndarray, gap: float, last: int) -> np.ndarray:
    """Index of the rib whose line `_rib_pos` is nearest to the offset t (inverts the quadratic)."""
    kf = (np.sqrt(np.clip(1.0 + 0.12 * t / gap, 0.0, None)) - 1.0) / 0.06
    return np.clip(np.rint(kf), 0, last).astype(np.intp)


@dataclass(frozen=True)
class _PtxGeom:
    lung: int  # index into the lungs tuple
    site: str
    depth: float  # normalised rim depth
    center: float  # degrees
    half: float  # degrees


def _draw_ptx(rng: np.random.Generator, side: int, site: str | None) -> _PtxGeom:
    """Draw the geometry of one pneumothorax in lung `side` (0 right, 1 left).

    Sizes follow what annotated sets hold: mostly moderate to large (CANDID-PTX's smallest
    masks are ~375 px at 512², a rim of a few millimetres), with a minority of small ones.
    """
    site = site or str(
        rng.choice(["apical", "apicolateral", "lateral", "large"], p=[0.25, 0.25, 0.2, 0.3])
    )
    if site == "apical":
        center, half = rng.uniform(80, 105), rng.uniform(40, 65)
    elif site == "apicolateral":
        center, half = rng.uniform(40, 65), rng.uniform(50, 75)
    elif site == "lateral":
        center, half = rng.uniform(-15, 20), rng.uniform(45, 65)
    elif site == "basal":
        center, half = rng.uniform(-55, -35), rng.uniform(25, 35)
    else:  # large: the lung falls away from the apex, the lateral wall and the base
        center, half = rng.uniform(25, 50), rng.uniform(115, 150)
    if site == "large":
        depth = rng.uniform(0.06, 0.13)  # 2–4.5 cm: the lung has fallen well away from the wall
    else:
        # A rim of 4–9 mm (small, 15%), 9–18 mm (moderate, 40%) or 18–30 mm (45%). All three
        # are drawn whichever is chosen, so the stream does not depend on the choice.
        depths = [rng.uniform(0.012, 0.025), rng.uniform(0.025, 0.05), rng.uniform(0.05, 0.085)]
        depth = float(depths[rng.choice(3, p=[0.15, 0.4, 0.45])])
    return _PtxGeom(side, site, depth, center, half)


def _size_word(depth_mm: float) -> str:
    return "small" if depth_mm < 10 else "moderate" if depth_mm < 20 else "large"


# ----------------------------------------------------------------------------- vessels


def _vessel_tree(rng: np.random.Generator, lung: _Lung, heart: _Heart, cx: float, w_min: float):
    """Branching pulmonary vessels from the hilum, as segments (x0, y0, x1, y1, width, value).

    Grown one generation at a time for all tips at once; a tip dies when it leaves the lung
    or gets thinner than `w_min`, so the markings thin out and fade toward the periphery.
    """
    trunks = np.array([100.0, 62.0, 22.0, -18.0, -52.0, -80.0]) + rng.normal(0, 7, 6)
    n = trunks.size
    u = np.full(n, lung.hilum_u) + rng.normal(0, 0.006, n)
    y = np.full(n, lung.hilum_y) + np.array([-0.03, -0.02, 0, 0.01, 0.02, 0.03])
    ang = trunks
    width = np.array([0.0075, 0.0075, 0.0080, 0.0095, 0.0105, 0.0100]) * rng.uniform(0.85, 1.15)
    length = np.full(n, 0.05) * rng.uniform(0.85, 1.15)
    segs = []
    for gen in range(9):
        if u.size == 0:
            break
        m = u.size
        a1 = np.radians(ang + rng.normal(0, 9, m))
        u1, y1 = u + 0.5 * length * np.cos(a1), y - 0.5 * length * np.sin(a1)
        a2 = a1 + np.radians(rng.normal(0, 9, m))
        u2, y2 = u1 + 0.5 * length * np.cos(a2), y1 - 0.5 * length * np.sin(a2)
        x1, x2 = cx + lung.sg * u1, cx + lung.sg * u2
        ends_x, ends_y = np.concatenate([x1, x2]), np.concatenate([y1, y2])
        inner = _lung_margins(lung, heart, cx, ends_x, ends_y)[0]
        in1, in2 = inner[:m] > 0.004, inner[m:] > 0.008
        if gen == 0:  # trunks start in the hilum, outside the aerated lung
            in1 = np.ones(m, dtype=bool)
        value = np.sqrt(width / 0.01)
        x0 = cx + lung.sg * u
        first = np.stack([x0, y, x1, y1, width, value], axis=1)[in1]
        second = np.stack([x1, y1, x2, y2, width * 0.95, value], axis=1)[in1 & in2]
        segs += [first, second]
        keep = in1 & in2
        u, y, ang, width, length = (
            u2[keep],
            y2[keep],
            np.degrees(a2[keep]),
            width[keep],
            length[keep],
        )
        m = u.size
        turn = np.where(rng.random(m) < 0.5, -1.0, 1.0)
        major = ang + turn * rng.normal(16, 6, m)
        minor = ang - turn * rng.normal(34, 8, m)
        u, y = np.concatenate([u, u]), np.concatenate([y, y])
        ang = np.concatenate([major, minor])
        width = np.concatenate(
            [width * rng.uniform(0.74, 0.84, m), width * rng.uniform(0.55, 0.68, m)]
        )
        length = np.concatenate([length, length]) * rng.uniform(0.72, 0.86, 2 * m)
        alive = width >= w_min
        u, y, ang, width, length = u[alive], y[alive], ang[alive], width[alive], length[alive]
    return np.concatenate(segs, axis=0) if segs else np.zeros((0, 6))


def _draw_segments(canvas: Image.Image, pose: _Pose, segs: np.ndarray, gain: float) -> None:
    """Draw vessel segments (anatomy coordinates) into a PIL canvas, thick ones first.

    `gain` maps a vessel's value to the canvas's unit (255 for an 8-bit canvas)."""
    n = canvas.size[0]
    ax, ay = pose.to_image(segs[:, 0], segs[:, 1])
    bx, by = pose.to_image(segs[:, 2], segs[:, 3])
    px = np.stack([ax * n - 0.5, ay * n - 0.5, bx * n - 0.5, by * n - 0.5], axis=1)
    widths = np.maximum(1, np.rint(segs[:, 4] * pose.scale * n)).astype(int)
    values = np.minimum(segs[:, 5] * gain, 255.0)
    draw = ImageDraw.Draw(canvas)
    for i in np.argsort(-segs[:, 4], kind="stable"):
        draw.line(tuple(px[i]), fill=int(values[i]), width=int(widths[i]))


# ----------------------------------------------------------------------------- fine lines


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

    def __init__(self, n: int, pose: _Pose):
        self.n, self.pose = n, pose
        # 8-bit canvas: PIL blurs it in C; objects are bright enough that 1/255 steps vanish.
        self.img = Image.new("L", (n, n), 0)
        self.draw = ImageDraw.Draw(self.img)
        self.box: list[float] | None = None

    def px(self, pts: np.ndarray) -> list[tuple[float, float]]:
        """Anatomy points (k×2) -> pixel coordinates, growing the dirty box."""
        x, y = self.pose.to_image(pts[:, 0], pts[:, 1])
        x, y = x * self.n - 0.5, y * self.n - 0.5
        lo = [float(x.min()), float(y.min())]
        hi = [float(x.max()), float(y.max())]
        if self.box is None:
            self.box = lo + hi
        else:
            self.box = [
                min(self.box[0], lo[0]),
                min(self.box[1], lo[1]),
                max(self.box[2], hi[0]),
                max(self.box[3], hi[1]),
            ]
        return list(zip(x.tolist(), y.tolist(), strict=True))

    def line(self, pts: np.ndarray, width: float, value: float) -> None:
        fill = int(round(value * 255))
        self.draw.line(self.px(pts), fill=fill, width=max(1, int(round(width))), joint="curve")

    def disk(self, center: np.ndarray, radius_px: float, value: float, ring: float = 0.0) -> None:
        (x, y), r = self.px(center[None, :])[0], radius_px
        self.box = [
            min(self.box[0], x - r),
            min(self.box[1], y - r),
            max(self.box[2], x + r),
            max(self.box[3], y + r),
        ]
        box = (x - r, y - r, x + r, y + r)
        fill = int(round(value * 255))
        if ring:
            self.draw.ellipse(box, outline=fill, width=max(1, int(round(ring))))
        else:
            self.draw.ellipse(box, fill=fill)

    def text(self, xy_px: tuple[float, float], letter: str, height_px: int, value: float) -> None:
        font = _font(max(8, height_px))
        self.draw.text(xy_px, letter, fill=int(round(value * 255)), font=font)
        x0, y0, x1, y1 = self.draw.textbbox(xy_px, letter, font=font)
        b = self.box or [x0, y0, x1, y1]
        self.box = [min(b[0], x0), min(b[1], y0), max(b[2], x1), max(b[3], y1)]

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


def _chest_tube(rng, ov: _Overlay, lung: _Lung, cx: float, size: int) -> None:
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


def _ecg_leads(rng, ov: _Overlay, pat: Patient, size: int, k: int) -> None:
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


def _arc_field(pose: _Pose, size: int, arc: dict, box) -> tuple[np.ndarray, np.ndarray]:
    """Signed radial distance (px) to a circular arc and its along-arc weight, in a window."""
    r0, r1, c0, c1 = box
    X, Y = pose.grid(size, slice(r0, r1), slice(c0, c1))
    dx, dy = X - arc["cx"], Y - arc["cy"]
    dr = (np.sqrt(dx * dx + dy * dy) - arc["r"]) * size * pose.scale
    phi = np.arctan2(dy, dx)
    mid, half = arc["phi"], arc["half"]
    t = np.abs((phi - mid + np.pi) % (2 * np.pi) - np.pi) / half
    return dr, _smooth((1.0 - t) * 4.0)


def _skin_fold(
    rng, pose: _Pose, lung: _Lung, cx: float, size: int, image: np.ndarray, scale: float
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
    # Circle through three points.
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
    arc = {"cx": ux, "cy": uy, "r": rad, "phi": pa + span / 2, "half": abs(span) / 2}
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
    edge = np.where(dr < 0, np.exp(dr / decay), 0.0) * _sig(-dr / sigma)
    line = np.exp(-((dr / sigma) ** 2))
    amp = rng.uniform(0.05, 0.09)
    image[r0:r1, c0:c1] += (amp * scale * (0.6 * line + 0.7 * edge) * along).astype(np.float32)


# ----------------------------------------------------------------------------- the phantom


def make_phantom(
    rng: np.random.Generator,
    size: int = 1024,
    n_ptx: int = 0,
    patient: Patient | None = None,
    *,
    chest_tube: bool | None = None,
    skin_fold: bool | None = None,
    ecg: bool | None = None,
    sites: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], PhantomMeta]:
    """Draw one frontal chest radiograph with `n_ptx` (0, 1 or 2) pneumothoraces.

    Returns `(image, masks, meta)`: image is uint16 (size, size) with 12-bit values in the
    MONOCHROME2 sense (air dark), masks one bool (size, size) array per pneumothorax (never
    empty), meta the findings. Everything random comes from `rng`; the confounders are drawn
    at the same rates whatever `n_ptx` is, unless forced with the keyword arguments.
    """
    if size < 32:
        raise ValueError(f"phantom size must be at least 32 pixels, got {size}")
    if n_ptx not in (0, 1, 2):
        raise ValueError(f"n_ptx must be 0, 1 or 2, got {n_ptx}")
    pat = patient or make_patient(rng)
    L, V = min(size, _ANATOMY_RES), min(size, _VESSEL_RES)
    pose = _Pose(
        scale=rng.uniform(0.93, 1.04),
        rot=math.radians(rng.normal(0, 1.5)),
        dx=rng.normal(0, 0.012),
        dy=rng.normal(0, 0.012),
    )
    # Breathing and positioning move the domes a little between a patient's images.
    # An AP (portable) film magnifies the heart, raises the clavicles and, supine or sick,
    # the patient breathes in less.
    ap = rng.random() < 0.3
    breath = rng.normal(0, 0.012) - (rng.uniform(0.01, 0.05) if ap else 0.0)
    apex, cp = pat.apex_y + rng.normal(0, 0.004), pat.cp_y + breath
    cx = pat.cx
    heart = _Heart(
        x=cx + pat.heart_rx * 0.32,
        y=cp - pat.heart_ry * 0.75,
        rx=pat.heart_rx * (1.12 if ap else 1.0),
        ry=pat.heart_ry * (1.05 if ap else 1.0),
        tilt=math.radians(pat.heart_tilt),
    )
    lungs = []
    for sg in (-1, 1):
        left = sg > 0  # the left hemidiaphragm is lower, the left hilum higher
        a = apex + (0.006 if left else 0.0)
        c = cp + (0.025 if left else 0.0)
        hy = a + 0.40 * (c - a) - (0.015 if left else 0.0)
        lungs.append(
            _Lung(
                sg=sg,
                w=pat.lung_w * (0.97 if left else 1.0),
                apex=a,
                cp=c,
                dome_h=pat.dome_h * (0.9 if left else 1.0),
                med_w=pat.med_w * (1.08 if left else 1.0),
                knob=0.028 if left else 0.0,
                knob_y=a + 0.13,
                hilum_u=pat.med_w * 1.05 + 0.03,
                hilum_y=hy,
            )
        )
    lungs = tuple(lungs)

    # The pneumothoraces draw from their own stream, so the same seed with and without one
    # gives the same picture everywhere else (and a PTX cannot shift the confounder rates).
    ptx_rng = np.random.default_rng(rng.integers(0, 2**63))
    X, Y = pose.grid(L)
    e = 1.2 / L  # soft edge of organ outlines: about one anatomy pixel

    # ---- body outline and soft tissue (thicker in the middle: an elliptic chord profile)
    # Half-width down the body: neck, shoulders (the widest), axillae, lower chest, waist.
    neck_y = apex - rng.uniform(0.12, 0.2)
    shoulder = min(0.62, pat.body_hw + rng.uniform(0.06, 0.12))
    hw = 0.07 + (shoulder - 0.07) * _smooth((Y - neck_y) / (apex + 0.01 - neck_y))
    hw = hw - (shoulder - pat.body_hw * 0.97) * _smooth((Y - apex) / 0.14)
    hw = hw + pat.body_hw * 0.03 * _smooth((Y - apex - 0.14) / 0.3)
    hw = hw * (1.0 - 0.35 * np.clip(Y - cp, 0.0, None))
    inside = hw - np.abs(X - cx)  # distance in from the skin
    body = _sig(inside / (2.5 * e))  # skin edges are soft, and must not alias
    # Tissue path length: rises over a few centimetres from the skin, a little more centrally.
    thick = (1.0 - np.exp(-np.clip(inside, 0.0, None) / 0.035)) * (
        0.8 + 0.2 * np.clip(inside / hw, 0.0, 1.0)
    )
    A = 0.48 * thick * body
    for sg in (-1, 1):  # humeral heads in the shoulders
        hx, hy = cx + sg * (pat.lung_w + rng.uniform(0.06, 0.1)), apex - rng.uniform(0.0, 0.04)
        d2 = ((X - hx) ** 2 + (Y - hy) ** 2) / 0.06**2
        head = np.clip(1.0 - d2, 0.0, 1.0)
        A += (0.09 * np.sqrt(head) + 0.04 * np.exp(-(((np.sqrt(d2) - 0.95) / 0.07) ** 2))) * body

    # ---- abdomen under the diaphragm (denser than the chest wall), liver, gastric bubble
    u_abs = np.abs(X - cx)
    under = np.where(X < cx, _dome_y(lungs[0], u_abs), _dome_y(lungs[1], u_abs))
    # Lateral to the costophrenic angles the chest wall continues: fade the abdomen out there.
    under_w = _smooth((pat.lung_w * 1.08 - u_abs) / 0.08)
    below = _sig((Y - under) / e) * under_w
    A += 0.10 * below * body
    if rng.random() < 0.6:
        gx = cx + lungs[1].w * rng.uniform(0.45, 0.65)
        gy = _dome_y(lungs[1], gx - cx) + rng.uniform(0.025, 0.04)
        d2 = ((X - gx) / 0.05) ** 2 + ((Y - gy) / 0.028) ** 2
        A -= 0.09 * _sig((1.0 - d2) * 4) * _sig((gy + 0.006 - Y) / e) * below

    # ---- mediastinum, heart, spine, trachea
    med = np.where(X < cx, _med_u(lungs[0], Y), _med_u(lungs[1], Y))
    hm = _heart_margin(heart, X, Y)
    central = np.maximum(
        0.15
        * _sig((med - u_abs) / (1.5 * e))
        * _sig((cp - Y) / 0.02)
        * _smooth((Y - apex + 0.1) / 0.12),
        0.15 * _sig(-hm / e) * np.sqrt(np.clip(-hm / heart.ry * 3.0, 0.0, 1.0)),
    )
    A += central * (1.0 - below)  # heart and mediastinum sit on the diaphragm
    sw = 0.032
    spine = np.sqrt(np.clip(1.0 - ((X - cx) / sw) ** 2, 0.0, 1.0))
    period = pat.rib_gap * 1.02
    phase = ((Y - apex) / period) % 1.0
    vert = (
        0.75
        + 0.25 * _smooth(np.minimum(phase, 1 - phase) * 12)
        + 0.2 * np.exp(-(((phase - 0.12) / 0.05) ** 2))
    )
    A += 0.06 * spine * vert
    t_x = cx - 0.006
    carina = apex + 0.19
    trach = _sig((0.013 - np.abs(X - t_x)) / e) * _sig((carina - Y) / e)
    for sg in (-1, 1):  # main bronchi
        bt = np.clip((Y - carina) / 0.07, 0.0, 1.0)
        bx = t_x + sg * bt * 0.06
        trach += _sig((0.009 - np.abs(X - bx)) / e) * (Y > carina) * (Y < carina + 0.07)
    A -= 0.075 * np.clip(trach, 0.0, 1.0)

    # ---- lungs (aerated: lighter than tissue, most in the middle of each lung)
    # Each lung lives on its own side of the midline: evaluate it on that half only.
    c_mid = int(pose.to_image(cx, 0.5)[0] * L)
    c_pad = int(0.06 * L) + 2
    halves = (slice(0, min(L, c_mid + c_pad)), slice(max(0, c_mid - c_pad), L))
    inners, walls = [], []
    lung_soft = np.zeros_like(A)
    for lung, cs in zip(lungs, halves, strict=True):
        inner = np.full_like(A, -1.0)
        wall = np.full_like(A, -1.0)
        inner[:, cs], wall[:, cs] = _lung_margins(lung, heart, cx, X[:, cs], Y[:, cs])
        inners.append(inner)
        walls.append(wall)
        soft = _sig(inner[:, cs] / e)
        lung_soft[:, cs] = np.maximum(lung_soft[:, cs], soft)
        A[:, cs] -= pat.lung_dark * soft * (0.55 + 0.45 * _smooth(inner[:, cs] / 0.09))
        u = lung.sg * (X[:, cs] - cx)
        hilum = np.exp(
            -(((u - lung.hilum_u) / 0.03) ** 2 + ((Y[:, cs] - lung.hilum_y) / 0.055) ** 2)
        )
        A[:, cs] += 0.08 * hilum
    if pat.sex == "F" and rng.random() < 0.75:
        for sg in (-1, 1):
            bx, by = cx + sg * pat.lung_w * 0.62, cp - 0.02
            rr = np.sqrt(((X - bx) / 0.17) ** 2 + ((Y - by) / 0.13) ** 2)
            A += 0.07 * _sig((1.0 - rr) * 8) * _smooth((Y - (by - 0.08)) / 0.1)

    # ---- ribs: posterior arcs, faint anterior ribs, clavicles (in a band of rows)
    def rows_of(y0: float, y1: float) -> slice:
        lo = int(max(0, (pose.to_image(0.5, y0)[1] - 0.05) * L))
        hi = int(min(L, (pose.to_image(0.5, y1)[1] + 0.05) * L + 1))
        return slice(lo, max(lo, hi))

    amp = rng.uniform(0.05, 0.075)
    for lung, cs in zip(lungs, halves, strict=True):
        xs, ys = X[:, cs], Y[:, cs]
        un = lung.sg * (xs - cx) / lung.w
        first = apex - 0.045 + 0.003 * lung.sg
        # Posterior ribs: arcs rising a little from the spine, then bending down laterally.
        shape = un * (0.13 * un - 0.10) + 0.6 * np.clip(un - 0.8, 0.0, None) ** 2
        slopes = rng.normal(0.0, 0.015, 11).astype(np.float32)  # each rib a little different
        k = _nearest_rib(ys - shape - first, pat.rib_gap, 10)
        dy = (ys - shape - first - _rib_pos(k, pat.rib_gap) - slopes[k] * un) / (
            0.010 + 0.004 * np.clip(un, 0.0, 1.2)
        )
        span = _smooth((un - 0.08) / 0.08) * _smooth((1.18 - un) / 0.1)
        weight = amp * span * (1.0 - 0.8 * below[:, cs]) * body[:, cs]
        A[:, cs] += _lookup(_RIB_PROFILE, dy) * weight
        # Anterior ribs: faint, oblique, down toward the midline, ending at the cartilage.
        lift = 0.08 + 0.2 * (1.0 - un)
        k = _nearest_rib(ys - lift - first, pat.rib_gap, 6)
        dya = (ys - lift - first - _rib_pos(k, pat.rib_gap)) / 0.012
        span = _smooth((un - 0.35) / 0.1) * _smooth((1.05 - un) / 0.08)
        A[:, cs] += _lookup(_GAUSS_PROFILE, dya) * (0.35 * amp) * span * body[:, cs]
        rs = rows_of(apex - 0.1, apex + 0.08)
        xs, ys = X[rs, cs], Y[rs, cs]
        un = lung.sg * (xs - cx) / 0.36
        yc = apex + (0.0 if ap else 0.035) - 0.10 * un + 0.015 * np.sin(2 * np.pi * un)
        h = 0.5 * (0.028 - 0.006 * np.clip(un, 0, 1))
        dy = (ys - yc) / h
        core = np.clip(1.0 - dy * dy, 0.0, 1.0)
        prof = 0.6 * np.sqrt(core) + 0.4 * np.exp(-(((np.abs(dy) - 0.85) / 0.2) ** 2))
        A[rs, cs] += (
            0.11 * prof * _smooth((un - 0.06) / 0.05) * _smooth((1.05 - un) / 0.08) * body[rs, cs]
        )

    # ---- pneumothoraces: a rim of the lung along the chest wall, deepest at `center`
    pick_sides, sites_l = _ptx_sides(ptx_rng, n_ptx, sites)
    geoms = [_draw_ptx(ptx_rng, s, site) for s, site in zip(pick_sides, sites_l, strict=True)]
    mm_per_norm = 1024 * 0.35  # an anatomy unit is ~36 cm (0.35 mm pixels at 1024, scale 1)
    geoms = [_PtxGeom(g.lung, g.site, max(g.depth, 3.0 / size), g.center, g.half) for g in geoms]
    depth_fields = []
    ptx_soft = np.zeros_like(A)
    for g in geoms:
        lung = lungs[g.lung]
        d = g.depth * _plateau(_angle_deg(lung, cx, X, Y), g.center, g.half)
        depth_fields.append(d)
        # Where the rim is under half a full-size pixel deep there is no mask: no PTX either.
        inside = _sig(inners[g.lung] / e) * _sig((d - walls[g.lung]) / e) * _smooth(d * size - 0.5)
        ptx_soft = np.maximum(ptx_soft, inside)
        if g.site == "large":  # the collapsed lung holds less air: denser the more it collapsed
            A += (0.02 + 0.5 * g.depth) * _sig(inners[g.lung] / e) * (1.0 - inside)

    # ---- tone curve (processing): A -> display [0, 1], a gentle S for contrast
    a_lo, a_hi = rng.uniform(0.0, 0.04), rng.uniform(0.80, 0.95)
    D = np.clip((A - a_lo) / (a_hi - a_lo), 0.0, 1.0)
    s = rng.uniform(0.0, 0.35)
    D = (1 - s) * D + s * D * D * (3 - 2 * D)
    D += rng.normal(0, 0.006, D.shape).astype(np.float32)  # low-frequency mottle

    # ---- vessels at V: visible in aerated lung, fading toward the periphery, absent in a PTX
    vis = lung_soft * (0.35 + 0.65 * _smooth(np.maximum(inners[0], inners[1]) / 0.05))
    for lung in lungs:
        u = lung.sg * (X - cx)
        vis = np.maximum(
            vis, np.exp(-(((u - lung.hilum_u) / 0.035) ** 2 + ((Y - lung.hilum_y) / 0.06) ** 2))
        )
    vis *= 1.0 - ptx_soft
    # Parenchymal texture (overlapping small vessels): band-limited noise, gone in a PTX too.
    texture = _blur121(rng.standard_normal((L, L), dtype=np.float32), 1)
    D += texture * vis * (rng.uniform(0.03, 0.05) * (L / 256) ** 0.5)
    DV = _resize(D.astype(np.float32), V)
    # 8-bit canvas (value 1 -> 200): PIL draws and blurs it in C. At 512 the 2x bilinear
    # upsample below is blur enough for the aliased lines.
    canvas = Image.new("L", (V, V), 0)
    w_min = 1.0 / V
    gain = rng.uniform(0.09, 0.14)
    for lung in lungs:
        _draw_segments(canvas, pose, _vessel_tree(rng, lung, heart, cx, w_min), 200.0)
    canvas = canvas.filter(ImageFilter.BoxBlur(0.5)) if V < 512 else canvas
    vessels = np.asarray(canvas, dtype=np.float32) * np.float32(gain / 200.0)
    DV += vessels * _resize(vis.astype(np.float32), V, Image.BILINEAR)
    # From here on the image is in 12-bit units: scale at V, where it is 4x cheaper than at F.
    white = rng.uniform(3300, 4000)
    black = rng.uniform(40, 250)
    noise_sd = rng.uniform(10, 28)  # 12-bit units
    noise_k = noise_sd / 104.0  # the triangular noise below has sd ≈ 104 before scaling
    DV *= np.float32(white)
    DV += np.float32(black - 255.0 * noise_k)
    DF = _resize(DV, size, Image.BILINEAR)
    air = black - 255.0 * noise_k  # outside the body, before the detector noise is added

    # ---- full-resolution pneumothorax masks, darkening and visceral pleural lines
    masks, findings = [], []
    sigma = max(0.6, 1.5 * size / 1024)  # the visceral pleural line: about half a millimetre
    for g, d in zip(geoms, depth_fields, strict=True):
        mask, area = _ptx_full(g, d, inners, walls, L, size, DF, ptx_rng, sigma, white, air)
        masks.append(mask)
        depth_mm = g.depth * mm_per_norm
        findings.append(
            Pneumothorax(_SIDES[g.lung], g.site, _size_word(depth_mm), round(depth_mm, 1), area)
        )

    # ---- confounders (same rates with and without a pneumothorax). The decisions always
    # consume the main stream and the drawing has its own, so forcing one changes nothing else.
    draws = rng.random(3)
    conf_rng = np.random.default_rng(rng.integers(0, 2**63))
    ov = _Overlay(size, pose)
    tube_side = None
    if chest_tube if chest_tube is not None else draws[0] < (0.2 if ap else 0.1):
        i = int(conf_rng.integers(2))
        tube_side = _SIDES[i]
        _chest_tube(conf_rng, ov, lungs[i], cx, size)
    n_ecg = 0
    if ecg if ecg is not None else draws[1] < (0.5 if ap else 0.2):
        n_ecg = int(conf_rng.integers(2, 6))
        _ecg_leads(conf_rng, ov, pat, size, n_ecg)
    fold_side = None
    if skin_fold if skin_fold is not None else draws[2] < 0.15:
        i = int(conf_rng.integers(2))
        fold_side = _SIDES[i]
        _skin_fold(conf_rng, pose, lungs[i], cx, size, DF, white)
    marker = None
    if rng.random() < 0.6:
        marker = str(rng.choice(["R", "L"]))
        hpx = int(0.045 * size)
        x = (0.06 if marker == "R" else 0.89) * size + rng.normal(0, 0.01) * size
        ov.text((x, rng.uniform(0.03, 0.08) * size), marker, hpx, 0.9)
    ov.add_to(DF, white)

    # ---- detector: noise, 12-bit quantisation
    # Triangular noise from the two bytes of random uint16s: cheap, and sd ≈ 104 before scaling.
    raw = rng.integers(0, 65536, size * size, dtype=np.uint16).view(np.uint8)
    tri = (raw[0::2].astype(np.int16) + raw[1::2]).reshape(size, size)
    DF += tri * np.float32(noise_k)
    np.clip(DF, 0, MAX_VALUE, out=DF)
    image = DF.astype(np.uint16)

    meta = PhantomMeta(
        patient=pat,
        size=size,
        pixel_spacing_mm=round(0.35 * 1024 / size / pose.scale, 4),
        view="AP" if ap else "PA",
        pneumothoraces=findings,
        chest_tube=tube_side,
        skin_fold=fold_side,
        ecg_leads=n_ecg,
        marker=marker,
    )
    return image, masks, meta


def _ptx_sides(rng: np.random.Generator, n_ptx: int, sites: tuple[str, ...] | None):
    """Which lung(s) and sites: one of either side, or two (bilateral, or apex + base of one).

    With `sites` given, two pneumothoraces are bilateral unless the sites are apical and basal.
    """
    if n_ptx == 0:
        return [], []
    if n_ptx == 1:
        return [int(rng.integers(2))], [sites[0] if sites else None]
    side = int(rng.integers(2))
    if sites:
        same = sorted(sites[:2]) == ["apical", "basal"]
        return ([side, side] if same else [side, 1 - side]), list(sites[:2])
    if rng.random() < 0.7:
        return [0, 1], [None, None]
    return [side, side], ["apical", "basal"]  # two separate regions of one lung


def _ptx_full(
    g: _PtxGeom, d: np.ndarray, inners, walls, L: int, size: int, DF, rng, sigma, scale, floor
):
    """Mask, darkening and pleural line of one pneumothorax at full resolution (in a window).

    `DF` is the full-size image in 12-bit units, `scale` the display-to-12-bit gain and `floor`
    the level of air outside the body; the low-resolution fields (`inners`, `walls`, `d`) are
    upsampled only inside the PTX's box.
    """
    lo_mask = (inners[g.lung] > 0) & (walls[g.lung] < d + 2.0 / L) & (d > 0)
    if not lo_mask.any():  # a rim thinner than an anatomy pixel: use the whole band
        lo_mask = (d > 0) & (inners[g.lung] > -2.0 / L)
    rows, cols = np.flatnonzero(lo_mask.any(1)), np.flatnonzero(lo_mask.any(0))
    s = size / L
    m = 3
    r0, r1 = max(0, int((rows[0] - m) * s)), min(size, int((rows[-1] + m + 1) * s))
    c0, c1 = max(0, int((cols[0] - m) * s)), min(size, int((cols[-1] + m + 1) * s))
    box = (r0, r1, c0, c1)
    inner = _resize_box(inners[g.lung].astype(np.float32), size, box)
    wall = _resize_box(walls[g.lung].astype(np.float32), size, box)
    dd = _resize_box(d.astype(np.float32), size, box)
    gap = (dd - wall) * size  # > 0 inside the pneumothorax, in pixels
    region = (inner > 0) & (gap > 0) & (dd * size > 0.5)
    if not region.any():  # too thin for this grid: keep the deepest pixels of the rim
        best = np.argmax(np.where(inner > 0, gap, -np.inf))
        region.flat[best] = True
    full = np.zeros((size, size), dtype=bool)
    full[r0:r1, c0:c1] = region
    # Antialiased region, confined to the mask's support (no darkening where the rim is too thin).
    soft = (
        np.clip(gap + 0.5, 0.0, 1.0)
        * np.clip(inner * size + 0.5, 0.0, 1.0)
        * _smooth(dd * size - 0.5)
    )
    # Pleural air instead of lung: no parenchyma in the beam, so clearly more lucent than the
    # aerated lung beside it (its markings are gone too, removed at the anatomy resolution).
    # A share of the level above air: the chest walls in front and behind still attenuate, so
    # the space stays brighter than the air outside the body however dark the lung was.
    dark = rng.uniform(0.45, 0.65)
    line = (
        np.exp(-((gap / sigma) ** 2))
        * _smooth(dd * size / 3.0)
        * np.clip(inner * size / 2.0, 0.0, 1.0)
    )
    win = DF[r0:r1, c0:c1]
    lucent = dark * soft * np.maximum(win - np.float32(floor), 0.0)
    win += (rng.uniform(0.08, 0.13) * scale * line - lucent).astype(np.float32)
    return full, int(full.sum())
