"""The plan of a synthetic dataset: patients, labels and DICOM flavours, all from the seed.

The parent process makes the whole plan, and every image then draws from its own generator,
so the files depend on the arguments alone, not on the number of worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptxfast.errors import PtxfastError

FORMATS = ("candid", "siim")

# Shares of the DICOM flavours. Compressed syntaxes cost 5-50x the encoding time of a plain
# file at 1024², so they stay a minority; MONOCHROME1 and rescale exercise the readers.
_SYNTAX_SHARES = {"j2k": 0.03, "rle": 0.08, "implicit": 0.05}
_MONO1_SHARE = 0.15
_RESCALE_CR_SHARE = 0.40  # of the CR images (DX rescale must be identity)
_DX_SHARE = 0.5
_TWO_PTX_SHARE = 0.1  # about one positive image in ten has two pneumothoraces
# (slope, intercept) pairs that keep every stored value inside 12 bits.
_RESCALES = ((2.0, 0.0), (2.0, -1024.0), (1.5, -500.0), (4.0, -2048.0))
_PATIENT_IMAGES = ((1, 2, 3, 4), (0.45, 0.30, 0.15, 0.10))  # images per patient


class SynthError(PtxfastError):
    """Unusable `synth` arguments or output folder; the message names the fix."""


@dataclass(frozen=True)
class ImagePlan:
    """Everything needed to draw and write image `index` of a dataset (made by `plan_dataset`)."""

    index: int
    seed: int
    size: int
    key: str  # dataset identity, mixed into every UID
    patient: int  # 1-based patient number
    k: int  # 1-based image number within the patient
    n_ptx: int
    modality: str  # "CR" or "DX"
    photometric: str
    rescale: tuple[float, float] | None
    syntax: str  # "explicit", "implicit", "j2k" or "rle"
    fmt: str
    out: str


def _quota(rng: np.random.Generator, n: int, shares: dict[str, float], rest: str) -> list[str]:
    """Exactly round(n * share) of each minority value, `rest` elsewhere, shuffled."""
    values: list[str] = []
    for name, share in shares.items():
        values += [name] * int(round(n * share))
    values = values[:n] + [rest] * max(0, n - len(values))
    return [values[i] for i in rng.permutation(n)]


def _check(n: int, size: int, positive_rate: float, fmt: str) -> None:
    """Refuse arguments no dataset can be made from, naming the option to change."""
    if n < 1:
        raise SynthError(f"--n must be at least 1, got {n}")
    if not 0.0 <= positive_rate <= 1.0:
        raise SynthError(f"--positive-rate must be between 0 and 1, got {positive_rate}")
    if fmt not in FORMATS:
        raise SynthError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if size < 32:
        raise SynthError(f"--size must be at least 32 pixels, got {size}")


def _patients(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """(patient, k) per image: 1-4 images per patient, numbered from 1."""
    patients: list[tuple[int, int]] = []
    p = 0
    while len(patients) < n:
        p += 1
        count = int(rng.choice(_PATIENT_IMAGES[0], p=_PATIENT_IMAGES[1]))
        patients += [(p, k) for k in range(1, count + 1)]
    return patients[:n]


def _labels(rng: np.random.Generator, n: int, positive_rate: float) -> list[int]:
    """Pneumothoraces per image: round(n * rate) positives, a tenth of them with two."""
    n_pos = int(round(n * positive_rate))
    n_two = int(round(n_pos * _TWO_PTX_SHARE))
    labels = [2] * n_two + [1] * (n_pos - n_two) + [0] * (n - n_pos)
    return [labels[i] for i in rng.permutation(n)]


def _rescales(rng: np.random.Generator, modality: list[str]) -> list[tuple[float, float] | None]:
    """(slope, intercept) per image, or None for no rescale tags.

    DX fixes rescale to identity (enumerated values 1 and 0); CR may carry any rescale.
    """
    n = len(modality)
    cr = [i for i in range(n) if modality[i] == "CR"]
    rescale: list[tuple[float, float] | None] = [
        (1.0, 0.0) if m == "DX" else None for m in modality
    ]
    for i, yes in zip(cr, _quota(rng, len(cr), {"yes": _RESCALE_CR_SHARE}, "no"), strict=True):
        if yes == "yes":
            rescale[i] = _RESCALES[int(rng.integers(len(_RESCALES)))]
    return rescale


def plan_dataset(
    n: int,
    seed: int,
    size: int = 1024,
    positive_rate: float = 0.17,
    fmt: str = "candid",
    out: Path | str = ".",
) -> list[ImagePlan]:
    """The full, deterministic plan of a dataset: patients, labels and DICOM flavours."""
    _check(n, size, positive_rate, fmt)
    rng = np.random.default_rng([seed, 0x5EED])
    key = f"{seed}:{n}:{size}:{positive_rate:g}"
    patients = _patients(rng, n)
    labels = _labels(rng, n, positive_rate)
    syntaxes = _quota(rng, n, _SYNTAX_SHARES, "explicit")
    photometric = _quota(rng, n, {"MONOCHROME1": _MONO1_SHARE}, "MONOCHROME2")
    modality = _quota(rng, n, {"DX": _DX_SHARE}, "CR")
    rescale = _rescales(rng, modality)
    return [
        ImagePlan(
            index=i,
            seed=seed,
            size=size,
            key=key,
            patient=patients[i][0],
            k=patients[i][1],
            n_ptx=labels[i],
            modality=modality[i],
            photometric=photometric[i],
            rescale=rescale[i],
            syntax=syntaxes[i],
            fmt=fmt,
            out=str(out),
        )
        for i in range(n)
    ]
