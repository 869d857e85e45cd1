"""Pneumothoraces: where they are, how deep, and how they are drawn at two resolutions.

A pneumothorax is the band of the lung within a depth d(θ) of the chest wall, where θ is the
direction from the hilum, so it is a crescent at the apex or along the lateral wall and a rim
around a collapsed lung when large. Its soft extent is worked out at the anatomy resolution
(to remove the lung markings there and densify a collapsed lung); the mask, the extra
lucency and the visceral pleural line are drawn at full resolution inside the PTX's box.
All of it draws from the pneumothorax stream, so the rest of the picture does not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptxfast.data.phantom.anatomy import SIDES, Chest, angle_deg
from ptxfast.data.phantom.attenuation import LungFields
from ptxfast.data.phantom.fields import resize_box, sig, smooth

MM_PER_UNIT = 1024 * 0.35  # an anatomy unit is ~36 cm (0.35 mm pixels at 1024, scale 1)


@dataclass(frozen=True)
class Pneumothorax:
    """One pneumothorax as drawn: which lung, where, how deep, how many mask pixels."""

    side: str  # patient side, "right" (image left) or "left" (image right)
    site: str  # "apical", "apicolateral", "lateral", "basal" or "large"
    size: str  # "small", "moderate" or "large", from the rim depth
    depth_mm: float  # maximal rim depth between chest wall and visceral pleura
    area_px: int  # mask pixels at the image's size


@dataclass(frozen=True)
class PtxGeom:
    """The geometry of one pneumothorax in anatomy units, before it is drawn."""

    lung: int  # index into the lungs tuple
    site: str
    depth: float  # normalised rim depth
    center: float  # degrees
    half: float  # degrees


def draw_ptx(rng: np.random.Generator, side: int, site: str | None) -> PtxGeom:
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
    return PtxGeom(side, site, depth, center, half)


def _size_word(depth_mm: float) -> str:
    """The size a report gives a rim of this depth."""
    return "small" if depth_mm < 10 else "moderate" if depth_mm < 20 else "large"


def _plateau(theta: np.ndarray, center: float, half: float) -> np.ndarray:
    """1 over the middle of [center - half, center + half], tapering to 0 at its ends."""
    t = np.abs(theta - center) / half
    return smooth((1.0 - t) * 2.5)


def _ptx_sides(
    rng: np.random.Generator, n_ptx: int, sites: tuple[str, ...] | None
) -> tuple[list[int], list[str | None]]:
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


@dataclass(frozen=True, eq=False)
class Rim:
    """One pneumothorax on the anatomy grid: its geometry and its depth field d(θ)."""

    geom: PtxGeom
    depth: np.ndarray  # rim depth (anatomy units) at each grid pixel, 0 away from it


def place_rims(
    rng: np.random.Generator,
    ch: Chest,
    lf: LungFields,
    A: np.ndarray,
    n_ptx: int,
    sites: tuple[str, ...] | None,
    size: int,
) -> tuple[list[Rim], np.ndarray]:
    """Place `n_ptx` pneumothoraces; return them and their soft union on the anatomy grid.

    A rim is at least three full-size pixels deep. A large one also densifies the collapsed
    lung in `A`: it holds less air the more it has collapsed.
    """
    pick_sides, sites_l = _ptx_sides(rng, n_ptx, sites)
    geoms = [draw_ptx(rng, s, site) for s, site in zip(pick_sides, sites_l, strict=True)]
    geoms = [PtxGeom(g.lung, g.site, max(g.depth, 3.0 / size), g.center, g.half) for g in geoms]
    X, Y, e = ch.X, ch.Y, ch.e
    out = []
    ptx_soft = np.zeros_like(A)
    for g in geoms:
        inner, wall = lf.inners[g.lung], lf.walls[g.lung]
        d = g.depth * _plateau(angle_deg(ch.lungs[g.lung], ch.cx, X, Y), g.center, g.half)
        out.append(Rim(g, d))
        # Where the rim is under half a full-size pixel deep there is no mask: no PTX either.
        inside = sig(inner / e) * sig((d - wall) / e) * smooth(d * size - 0.5)
        ptx_soft = np.maximum(ptx_soft, inside)
        if g.site == "large":
            A += (0.02 + 0.5 * g.depth) * sig(inner / e) * (1.0 - inside)
    return out, ptx_soft


def draw_full(
    rng: np.random.Generator,
    rims: list[Rim],
    lf: LungFields,
    DF: np.ndarray,
    scale: float,
    floor: float,
) -> tuple[list[np.ndarray], list[Pneumothorax]]:
    """Draw each pneumothorax into the full-size image `DF`; return the masks and findings.

    `DF` is in 12-bit units, `scale` the display-to-12-bit gain and `floor` the level of air
    outside the body.
    """
    size = DF.shape[0]
    masks, findings = [], []
    sigma = max(0.6, 1.5 * size / 1024)  # the visceral pleural line: about half a millimetre
    for rim in rims:
        g = rim.geom
        mask = _draw_one(rng, rim, lf, DF, sigma, scale, floor)
        masks.append(mask)
        depth_mm = g.depth * MM_PER_UNIT
        findings.append(
            Pneumothorax(
                SIDES[g.lung], g.site, _size_word(depth_mm), round(depth_mm, 1), int(mask.sum())
            )
        )
    return masks, findings


def _box(rim: Rim, lf: LungFields, size: int) -> tuple[int, int, int, int]:
    """The full-size window (r0, r1, c0, c1) around a rim, with a margin of 3 grid pixels."""
    inner, wall, d = lf.inners[rim.geom.lung], lf.walls[rim.geom.lung], rim.depth
    L = inner.shape[0]
    lo_mask = (inner > 0) & (wall < d + 2.0 / L) & (d > 0)
    if not lo_mask.any():  # a rim thinner than an anatomy pixel: use the whole band
        lo_mask = (d > 0) & (inner > -2.0 / L)
    rows, cols = np.flatnonzero(lo_mask.any(1)), np.flatnonzero(lo_mask.any(0))
    s = size / L
    m = 3
    r0, r1 = max(0, int((rows[0] - m) * s)), min(size, int((rows[-1] + m + 1) * s))
    c0, c1 = max(0, int((cols[0] - m) * s)), min(size, int((cols[-1] + m + 1) * s))
    return r0, r1, c0, c1


def _draw_one(
    rng: np.random.Generator,
    rim: Rim,
    lf: LungFields,
    DF: np.ndarray,
    sigma: float,
    scale: float,
    floor: float,
) -> np.ndarray:
    """Mask, darkening and pleural line of one pneumothorax at full resolution (in a window).

    The low-resolution fields (the lung's inner and wall margins, the rim depth) are upsampled
    only inside the PTX's box.
    """
    size = DF.shape[0]
    box = r0, r1, c0, c1 = _box(rim, lf, size)
    inner = resize_box(lf.inners[rim.geom.lung].astype(np.float32), size, box)
    wall = resize_box(lf.walls[rim.geom.lung].astype(np.float32), size, box)
    dd = resize_box(rim.depth.astype(np.float32), size, box)
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
        * smooth(dd * size - 0.5)
    )
    # Pleural air instead of lung: no parenchyma in the beam, so clearly more lucent than the
    # aerated lung beside it (its markings are gone too, removed at the anatomy resolution).
    # A share of the level above air: the chest walls in front and behind still attenuate, so
    # the space stays brighter than the air outside the body however dark the lung was.
    dark = rng.uniform(0.45, 0.65)
    line = (
        np.exp(-((gap / sigma) ** 2))
        * smooth(dd * size / 3.0)
        * np.clip(inner * size / 2.0, 0.0, 1.0)
    )
    win = DF[r0:r1, c0:c1]
    lucent = dark * soft * np.maximum(win - np.float32(floor), 0.0)
    win += (rng.uniform(0.08, 0.13) * scale * line - lucent).astype(np.float32)
    return full
