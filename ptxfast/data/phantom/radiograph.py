"""`make_phantom`: one frontal chest radiograph, its pneumothorax masks and its findings.

The stages run in a fixed order, each drawing from the generator in turn, so the same seed
gives the same picture (tests/test_synth_pinned.py pins it; CPUs of other SIMD levels round a
few pixels one grey level apart): the posed chest, the attenuation map part by part, the
pneumothoraces' extent, the tone curve, the lung markings, the grey scale, the full-resolution
pneumothoraces, the confounders, the detector noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ptxfast.data.phantom import acquisition, attenuation, pneumothorax
from ptxfast.data.phantom.anatomy import Patient, make_patient, pose_chest
from ptxfast.data.phantom.confounders import draw_confounders
from ptxfast.data.phantom.pneumothorax import Pneumothorax
from ptxfast.data.phantom.vessels import lung_markings

ANATOMY_RES = 256  # the body is smooth: 256² carries all of it
VESSEL_RES = 512  # vessels down to ~1 px at 512² before the final upsample


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
    ch = pose_chest(rng, pat, min(size, ANATOMY_RES))
    # The pneumothoraces draw from their own stream, so the same seed with and without one
    # gives the same picture everywhere else (and a PTX cannot shift the confounder rates).
    ptx_rng = np.random.default_rng(rng.integers(0, 2**63))

    A, body = attenuation.soft_tissue(rng, ch)
    below = attenuation.abdomen(rng, ch, A, body)
    attenuation.mediastinum(ch, A, below)
    attenuation.spine(ch, A)
    attenuation.airways(ch, A)
    lf = attenuation.aerate_lungs(ch, A)
    attenuation.breasts(rng, ch, A)
    attenuation.ribs(rng, ch, A, body, below, lf.halves)
    rims, ptx_soft = pneumothorax.place_rims(ptx_rng, ch, lf, A, n_ptx, sites, size)

    D = acquisition.tone_curve(rng, A)
    DV = lung_markings(rng, ch, D, lf, ptx_soft, min(size, VESSEL_RES))
    DF, grey = acquisition.to_detector(rng, DV, size)
    masks, findings = pneumothorax.draw_full(ptx_rng, rims, lf, DF, grey.white, grey.air)
    conf = draw_confounders(rng, ch, DF, grey.white, chest_tube, ecg, skin_fold)
    image = acquisition.detector_noise(rng, DF, grey)

    meta = PhantomMeta(
        patient=pat,
        size=size,
        pixel_spacing_mm=round(0.35 * 1024 / size / ch.pose.scale, 4),
        view="AP" if ch.ap else "PA",
        pneumothoraces=findings,
        chest_tube=conf.chest_tube,
        skin_fold=conf.skin_fold,
        ecg_leads=conf.ecg_leads,
        marker=conf.marker,
    )
    return image, masks, meta
