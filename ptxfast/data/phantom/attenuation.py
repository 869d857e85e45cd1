"""The attenuation map at the anatomy resolution, drawn part by part into one float32 array.

Each function adds (or removes) one part's attenuation in place, in the order the picture is
built: soft tissue and humeral heads, the abdomen under the diaphragm, the mediastinum and
heart, spine, airways, the aerated lungs, breast shadows, then ribs and clavicles. The body
is smooth, so up to 256² carries all of it; the later stages upsample the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptxfast.data.phantom.anatomy import (
    Chest,
    Lung,
    dome_y,
    heart_margin,
    lung_margins,
    med_u,
    nearest_rib,
    rib_pos,
)
from ptxfast.data.phantom.fields import lookup, profile_table, sig, smooth

# A rib seen end-on: a cylinder of cancellous bone (sqrt chord) with a brighter cortex.
_RIB_PROFILE = profile_table(
    lambda d: (
        0.55 * np.sqrt(np.clip(1 - d * d, 0, 1)) + 0.45 * np.exp(-(((np.abs(d) - 0.85) / 0.2) ** 2))
    )
)
_GAUSS_PROFILE = profile_table(lambda d: np.exp(-d * d) * (np.abs(d) < 1.95))


@dataclass(frozen=True, eq=False)
class LungFields:
    """Both lungs on the anatomy grid: what the pneumothoraces and the vessels are drawn in."""

    inners: list[np.ndarray]  # soft distance inside each lung (> 0 inside; -1 off its half)
    walls: list[np.ndarray]  # soft distance to each lung's chest-wall boundary
    soft: np.ndarray  # either lung's soft inside (0..1)
    halves: tuple[slice, slice]  # the grid columns each lung is evaluated on


def soft_tissue(rng: np.random.Generator, ch: Chest) -> tuple[np.ndarray, np.ndarray]:
    """(attenuation, body): the body outline and soft tissue, with the humeral heads.

    The tissue is thicker in the middle (an elliptic chord profile); its half-width down the
    body follows the neck, the shoulders (the widest), axillae, lower chest and waist.
    """
    X, Y, e, cx, pat, apex = ch.X, ch.Y, ch.e, ch.cx, ch.pat, ch.apex
    neck_y = apex - rng.uniform(0.12, 0.2)
    shoulder = min(0.62, pat.body_hw + rng.uniform(0.06, 0.12))
    hw = 0.07 + (shoulder - 0.07) * smooth((Y - neck_y) / (apex + 0.01 - neck_y))
    hw = hw - (shoulder - pat.body_hw * 0.97) * smooth((Y - apex) / 0.14)
    hw = hw + pat.body_hw * 0.03 * smooth((Y - apex - 0.14) / 0.3)
    hw = hw * (1.0 - 0.35 * np.clip(Y - ch.cp, 0.0, None))
    inside = hw - np.abs(X - cx)  # distance in from the skin
    body = sig(inside / (2.5 * e))  # skin edges are soft, and must not alias
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
    return A, body


def abdomen(rng: np.random.Generator, ch: Chest, A: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Add the abdomen under the diaphragm (denser than the chest wall) and, often, a gastric
    bubble; return where the abdomen is (0..1), which the heart and ribs are drawn against."""
    X, Y, e, cx, lungs = ch.X, ch.Y, ch.e, ch.cx, ch.lungs
    u_abs = np.abs(X - cx)
    under = np.where(X < cx, dome_y(lungs[0], u_abs), dome_y(lungs[1], u_abs))
    # Lateral to the costophrenic angles the chest wall continues: fade the abdomen out there.
    under_w = smooth((ch.pat.lung_w * 1.08 - u_abs) / 0.08)
    below = sig((Y - under) / e) * under_w
    A += 0.10 * below * body
    if rng.random() < 0.6:
        gx = cx + lungs[1].w * rng.uniform(0.45, 0.65)
        gy = dome_y(lungs[1], gx - cx) + rng.uniform(0.025, 0.04)
        d2 = ((X - gx) / 0.05) ** 2 + ((Y - gy) / 0.028) ** 2
        A -= 0.09 * sig((1.0 - d2) * 4) * sig((gy + 0.006 - Y) / e) * below
    return below


def mediastinum(ch: Chest, A: np.ndarray, below: np.ndarray) -> None:
    """Add the mediastinum and the heart, which sit on the diaphragm."""
    X, Y, e, cx, lungs, heart = ch.X, ch.Y, ch.e, ch.cx, ch.lungs, ch.heart
    med = np.where(X < cx, med_u(lungs[0], Y), med_u(lungs[1], Y))
    hm = heart_margin(heart, X, Y)
    central = np.maximum(
        0.15
        * sig((med - np.abs(X - cx)) / (1.5 * e))
        * sig((ch.cp - Y) / 0.02)
        * smooth((Y - ch.apex + 0.1) / 0.12),
        0.15 * sig(-hm / e) * np.sqrt(np.clip(-hm / heart.ry * 3.0, 0.0, 1.0)),
    )
    A += central * (1.0 - below)


def spine(ch: Chest, A: np.ndarray) -> None:
    """Add the thoracic spine: a column with vertebral bodies in step with the ribs."""
    X, Y, cx = ch.X, ch.Y, ch.cx
    sw = 0.032
    column = np.sqrt(np.clip(1.0 - ((X - cx) / sw) ** 2, 0.0, 1.0))
    period = ch.pat.rib_gap * 1.02
    phase = ((Y - ch.apex) / period) % 1.0
    vert = (
        0.75
        + 0.25 * smooth(np.minimum(phase, 1 - phase) * 12)
        + 0.2 * np.exp(-(((phase - 0.12) / 0.05) ** 2))
    )
    A += 0.06 * column * vert


def airways(ch: Chest, A: np.ndarray) -> None:
    """Remove the air column of the trachea and the main bronchi below the carina."""
    X, Y, e = ch.X, ch.Y, ch.e
    t_x = ch.cx - 0.006
    carina = ch.apex + 0.19
    trach = sig((0.013 - np.abs(X - t_x)) / e) * sig((carina - Y) / e)
    for sg in (-1, 1):  # main bronchi
        bt = np.clip((Y - carina) / 0.07, 0.0, 1.0)
        bx = t_x + sg * bt * 0.06
        trach += sig((0.009 - np.abs(X - bx)) / e) * (Y > carina) * (Y < carina + 0.07)
    A -= 0.075 * np.clip(trach, 0.0, 1.0)


def aerate_lungs(ch: Chest, A: np.ndarray) -> LungFields:
    """Darken the aerated lungs (most in the middle of each) and add the hila.

    Each lung lives on its own side of the midline, so it is evaluated on that half only.
    """
    X, Y, e, cx, L = ch.X, ch.Y, ch.e, ch.cx, ch.L
    c_mid = int(ch.pose.to_image(cx, 0.5)[0] * L)
    c_pad = int(0.06 * L) + 2
    halves = (slice(0, min(L, c_mid + c_pad)), slice(max(0, c_mid - c_pad), L))
    inners, walls = [], []
    lung_soft = np.zeros_like(A)
    for lung, cs in zip(ch.lungs, halves, strict=True):
        inner = np.full_like(A, -1.0)
        wall = np.full_like(A, -1.0)
        inner[:, cs], wall[:, cs] = lung_margins(lung, ch.heart, cx, X[:, cs], Y[:, cs])
        inners.append(inner)
        walls.append(wall)
        soft = sig(inner[:, cs] / e)
        lung_soft[:, cs] = np.maximum(lung_soft[:, cs], soft)
        A[:, cs] -= ch.pat.lung_dark * soft * (0.55 + 0.45 * smooth(inner[:, cs] / 0.09))
        u = lung.sg * (X[:, cs] - cx)
        hilum = np.exp(
            -(((u - lung.hilum_u) / 0.03) ** 2 + ((Y[:, cs] - lung.hilum_y) / 0.055) ** 2)
        )
        A[:, cs] += 0.08 * hilum
    return LungFields(inners, walls, lung_soft, halves)


def breasts(rng: np.random.Generator, ch: Chest, A: np.ndarray) -> None:
    """Add breast shadows over the lower zones of most women's films."""
    if ch.pat.sex == "F" and rng.random() < 0.75:
        X, Y, cx, cp = ch.X, ch.Y, ch.cx, ch.cp
        for sg in (-1, 1):
            bx, by = cx + sg * ch.pat.lung_w * 0.62, cp - 0.02
            rr = np.sqrt(((X - bx) / 0.17) ** 2 + ((Y - by) / 0.13) ** 2)
            A += 0.07 * sig((1.0 - rr) * 8) * smooth((Y - (by - 0.08)) / 0.1)


def ribs(
    rng: np.random.Generator,
    ch: Chest,
    A: np.ndarray,
    body: np.ndarray,
    below: np.ndarray,
    halves: tuple[slice, slice],
) -> None:
    """Add the posterior arcs, the faint anterior ribs and the clavicle over each lung."""
    amp = rng.uniform(0.05, 0.075)
    for lung, cs in zip(ch.lungs, halves, strict=True):
        _posterior_ribs(rng, ch, lung, cs, amp, A, body[:, cs], below[:, cs])
        _anterior_ribs(ch, lung, cs, amp, A, body)
        _clavicle(ch, lung, cs, A, body)


def _first_rib(ch: Chest, lung: Lung) -> float:
    """Height of the first rib's line at the spine on this lung's side."""
    return ch.apex - 0.045 + 0.003 * lung.sg


def _posterior_ribs(
    rng: np.random.Generator,
    ch: Chest,
    lung: Lung,
    cs: slice,
    amp: float,
    A: np.ndarray,
    body: np.ndarray,
    below: np.ndarray,
) -> None:
    """Posterior ribs: arcs rising a little from the spine, then bending down laterally.

    `body` and `below` are this half's columns: the ribs show inside the body, faint over
    the abdomen.
    """
    xs, ys = ch.X[:, cs], ch.Y[:, cs]
    gap = ch.pat.rib_gap
    un = lung.sg * (xs - ch.cx) / lung.w
    first = _first_rib(ch, lung)
    shape = un * (0.13 * un - 0.10) + 0.6 * np.clip(un - 0.8, 0.0, None) ** 2
    slopes = rng.normal(0.0, 0.015, 11).astype(np.float32)  # each rib a little different
    k = nearest_rib(ys - shape - first, gap, 10)
    dy = (ys - shape - first - rib_pos(k, gap) - slopes[k] * un) / (
        0.010 + 0.004 * np.clip(un, 0.0, 1.2)
    )
    span = smooth((un - 0.08) / 0.08) * smooth((1.18 - un) / 0.1)
    weight = amp * span * (1.0 - 0.8 * below) * body
    A[:, cs] += lookup(_RIB_PROFILE, dy) * weight


def _anterior_ribs(
    ch: Chest, lung: Lung, cs: slice, amp: float, A: np.ndarray, body: np.ndarray
) -> None:
    """Anterior ribs: faint, oblique, down toward the midline, ending at the cartilage."""
    ys = ch.Y[:, cs]
    un = lung.sg * (ch.X[:, cs] - ch.cx) / lung.w
    first = _first_rib(ch, lung)
    lift = 0.08 + 0.2 * (1.0 - un)
    k = nearest_rib(ys - lift - first, ch.pat.rib_gap, 6)
    dya = (ys - lift - first - rib_pos(k, ch.pat.rib_gap)) / 0.012
    span = smooth((un - 0.35) / 0.1) * smooth((1.05 - un) / 0.08)
    A[:, cs] += lookup(_GAUSS_PROFILE, dya) * (0.35 * amp) * span * body[:, cs]


def _rows_of(ch: Chest, y0: float, y1: float) -> slice:
    """The anatomy-grid rows that anatomy heights y0..y1 can reach under the pose."""
    pose, L = ch.pose, ch.L
    lo = int(max(0, (pose.to_image(0.5, y0)[1] - 0.05) * L))
    hi = int(min(L, (pose.to_image(0.5, y1)[1] + 0.05) * L + 1))
    return slice(lo, max(lo, hi))


def _clavicle(ch: Chest, lung: Lung, cs: slice, A: np.ndarray, body: np.ndarray) -> None:
    """The clavicle over this lung's apex, drawn in the band of rows it can cross."""
    apex = ch.apex
    rs = _rows_of(ch, apex - 0.1, apex + 0.08)
    xs, ys = ch.X[rs, cs], ch.Y[rs, cs]
    un = lung.sg * (xs - ch.cx) / 0.36
    yc = apex + (0.0 if ch.ap else 0.035) - 0.10 * un + 0.015 * np.sin(2 * np.pi * un)
    h = 0.5 * (0.028 - 0.006 * np.clip(un, 0, 1))
    dy = (ys - yc) / h
    core = np.clip(1.0 - dy * dy, 0.0, 1.0)
    prof = 0.6 * np.sqrt(core) + 0.4 * np.exp(-(((np.abs(dy) - 0.85) / 0.2) ** 2))
    A[rs, cs] += (
        0.11 * prof * smooth((un - 0.06) / 0.05) * smooth((1.05 - un) / 0.08) * body[rs, cs]
    )
