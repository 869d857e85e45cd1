"""The shapes of the chest: the patient's habitus, the lung and heart outlines as soft margins,
and `pose_chest`, which places one image's body (pose, view, breathing) on the anatomy grid.

Shapes are analytic functions of anatomy coordinates (x right, y down, both in [0, 1] of the
image), so the anatomy, vessel and full resolutions all draw the same body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptxfast.data.phantom.fields import Pose, smin

SIDES = ("right", "left")  # patient sides; the patient's right lung is on the image left


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
class Lung:
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
class Heart:
    """The cardiac silhouette: an ellipse tilted so that its apex points down and left."""

    x: float
    y: float
    rx: float
    ry: float
    tilt: float  # radians


def dome_y(lung: Lung, u):
    """Diaphragm height under the lung (y grows downward; the dome peaks mid-lung and falls
    steeply into the costophrenic angle at the lateral wall)."""
    t = (u - 0.45 * lung.w) / (0.55 * lung.w)
    return lung.cp - lung.dome_h * np.clip(1.0 - t * t, 0.0, 1.0)


def med_u(lung: Lung, y):
    """Half-width of the mediastinum at height y on this lung's side."""
    m = lung.med_w + 0.012 * np.clip((y - lung.apex) / 0.3, 0.0, 1.0)
    if lung.knob:
        m = m + lung.knob * np.exp(-(((y - lung.knob_y) / 0.035) ** 2))
    return m


def heart_margin(heart: Heart, x, y):
    """Approximate distance outside the cardiac silhouette (negative inside)."""
    c, s = math.cos(heart.tilt), math.sin(heart.tilt)
    dx, dy = x - heart.x, y - heart.y
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    r = np.sqrt((xr / heart.rx) ** 2 + (yr / heart.ry) ** 2)
    return (r - 1.0) * min(heart.rx, heart.ry)


def lung_margins(lung: Lung, heart: Heart, cx: float, x, y):
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
    dome = dome_y(lung, u) - y
    wall = smin([top, lateral, dome], 0.008)
    medial = u - med_u(lung, y)
    heart = heart_margin(heart, x, y)
    inner = smin([wall, medial, heart], 0.006)
    return inner, wall


def angle_deg(lung: Lung, cx: float, x, y):
    """Direction from the hilum in degrees: 0 lateral, 90 up (apex), -90 down."""
    u = lung.sg * (x - cx)
    return np.degrees(np.arctan2(lung.hilum_y - y, u - lung.hilum_u))


def rib_pos(k, gap: float):
    """Offset of rib k below the first at the spine; the spacing widens down the chest."""
    return gap * k * (1.0 + 0.03 * k)


def nearest_rib(t: np.ndarray, gap: float, last: int) -> np.ndarray:
    """Index of the rib whose line `rib_pos` is nearest to the offset t (inverts the quadratic)."""
    kf = (np.sqrt(np.clip(1.0 + 0.12 * t / gap, 0.0, None)) - 1.0) / 0.06
    return np.clip(np.rint(kf), 0, last).astype(np.intp)


@dataclass(frozen=True, eq=False)
class Chest:
    """One image's body as posed, with the anatomy grid every drawing stage evaluates it on."""

    pat: Patient
    pose: Pose
    ap: bool  # AP (portable) film: magnified heart, higher clavicles, shallower breath
    apex: float  # the lung apices in this image (the patient's, jittered)
    cp: float  # the right costophrenic angle in this image (moves with breathing)
    heart: Heart
    lungs: tuple[Lung, Lung]  # patient right (image left), patient left (image right)
    X: np.ndarray  # anatomy coordinates of the anatomy grid's pixel centres (float32, L×L)
    Y: np.ndarray
    e: float  # soft edge of organ outlines: about one anatomy pixel

    @property
    def cx(self) -> float:
        """The body's midline."""
        return self.pat.cx

    @property
    def L(self) -> int:
        """Side of the anatomy grid in pixels."""
        return self.X.shape[0]


def pose_chest(rng: np.random.Generator, pat: Patient, L: int) -> Chest:
    """Place one image of the patient: pose, PA or AP view, breathing, heart and lungs.

    Breathing and positioning move the domes a little between a patient's images. An AP
    (portable) film magnifies the heart, raises the clavicles and, supine or sick, the
    patient breathes in less.
    """
    pose = Pose(
        scale=rng.uniform(0.93, 1.04),
        rot=math.radians(rng.normal(0, 1.5)),
        dx=rng.normal(0, 0.012),
        dy=rng.normal(0, 0.012),
    )
    ap = rng.random() < 0.3
    breath = rng.normal(0, 0.012) - (rng.uniform(0.01, 0.05) if ap else 0.0)
    apex, cp = pat.apex_y + rng.normal(0, 0.004), pat.cp_y + breath
    heart = Heart(
        x=pat.cx + pat.heart_rx * 0.32,
        y=cp - pat.heart_ry * 0.75,
        rx=pat.heart_rx * (1.12 if ap else 1.0),
        ry=pat.heart_ry * (1.05 if ap else 1.0),
        tilt=math.radians(pat.heart_tilt),
    )
    lungs = (_lung(pat, apex, cp, -1), _lung(pat, apex, cp, 1))
    X, Y = pose.grid(L)
    return Chest(pat, pose, ap, apex, cp, heart, lungs, X, Y, e=1.2 / L)


def _lung(pat: Patient, apex: float, cp: float, sg: int) -> Lung:
    """One lung's outline; the left hemidiaphragm is lower and the left hilum higher."""
    left = sg > 0
    a = apex + (0.006 if left else 0.0)
    c = cp + (0.025 if left else 0.0)
    hy = a + 0.40 * (c - a) - (0.015 if left else 0.0)
    return Lung(
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
