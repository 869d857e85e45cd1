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

The package holds one module per part of the picture: `fields` (soft steps, resampling, the
pose), `anatomy` (habitus, lung and heart outlines, the posed chest), `attenuation` (the body
drawn part by part), `pneumothorax`, `vessels` (lung markings), `confounders` (tubes, leads,
skin folds, markers), `acquisition` (tone curve, grey scale, detector noise) and
`radiograph`, which wires them into `make_phantom`.
"""

from ptxfast.data.phantom.acquisition import MAX_VALUE
from ptxfast.data.phantom.anatomy import Patient, make_patient
from ptxfast.data.phantom.pneumothorax import Pneumothorax
from ptxfast.data.phantom.radiograph import PhantomMeta, make_phantom

__all__ = [
    "MAX_VALUE",
    "Patient",
    "Pneumothorax",
    "PhantomMeta",
    "make_patient",
    "make_phantom",
]
