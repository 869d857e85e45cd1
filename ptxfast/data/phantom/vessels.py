"""Lung markings: the pulmonary vessels drawn as a branching tree at up to 512², and the
parenchymal texture, both visible only in aerated lung and absent in a pneumothorax.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ptxfast.data.phantom.anatomy import Chest, Heart, Lung, lung_margins
from ptxfast.data.phantom.attenuation import LungFields
from ptxfast.data.phantom.fields import Pose, blur121, resize, smooth


def _vessel_tree(
    rng: np.random.Generator, lung: Lung, heart: Heart, cx: float, w_min: float
) -> np.ndarray:
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
        inner = lung_margins(lung, heart, cx, ends_x, ends_y)[0]
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


def _draw_segments(canvas: Image.Image, pose: Pose, segs: np.ndarray, gain: float) -> None:
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


def _visibility(ch: Chest, lf: LungFields, ptx_soft: np.ndarray) -> np.ndarray:
    """Where markings show (0..1): aerated lung fading toward the periphery, and the hila;
    nowhere inside a pneumothorax."""
    X, Y, cx = ch.X, ch.Y, ch.cx
    vis = lf.soft * (0.35 + 0.65 * smooth(np.maximum(lf.inners[0], lf.inners[1]) / 0.05))
    for lung in ch.lungs:
        u = lung.sg * (X - cx)
        vis = np.maximum(
            vis, np.exp(-(((u - lung.hilum_u) / 0.035) ** 2 + ((Y - lung.hilum_y) / 0.06) ** 2))
        )
    vis *= 1.0 - ptx_soft
    return vis


def lung_markings(
    rng: np.random.Generator,
    ch: Chest,
    D: np.ndarray,
    lf: LungFields,
    ptx_soft: np.ndarray,
    V: int,
) -> np.ndarray:
    """Add the parenchymal texture to the display image `D` (anatomy grid), upsample it to
    V×V and draw the vessel trees there; return the V×V image."""
    L = ch.L
    vis = _visibility(ch, lf, ptx_soft)
    # Parenchymal texture (overlapping small vessels): band-limited noise, gone in a PTX too.
    texture = blur121(rng.standard_normal((L, L), dtype=np.float32), 1)
    D += texture * vis * (rng.uniform(0.03, 0.05) * (L / 256) ** 0.5)
    DV = resize(D.astype(np.float32), V)
    # 8-bit canvas (value 1 -> 200): PIL draws and blurs it in C. At 512 the 2x bilinear
    # upsample below is blur enough for the aliased lines.
    canvas = Image.new("L", (V, V), 0)
    w_min = 1.0 / V
    gain = rng.uniform(0.09, 0.14)
    for lung in ch.lungs:
        _draw_segments(canvas, ch.pose, _vessel_tree(rng, lung, ch.heart, ch.cx, w_min), 200.0)
    canvas = canvas.filter(ImageFilter.BoxBlur(0.5)) if V < 512 else canvas
    vessels = np.asarray(canvas, dtype=np.float32) * np.float32(gain / 200.0)
    DV += vessels * resize(vis.astype(np.float32), V, Image.BILINEAR)
    return DV
