"""Pinned bytes: the phantom generator and `synth` write the same pixels and files per seed.

The checksums were computed once and are kept, so a refactor of the drawing or of the DICOM
writer cannot change a single pixel, mask or byte of a file unnoticed. They depend on the
libraries that compute the pixels and encode the files, so they are kept together with the
versions they were taken under and the test skips (saying how to re-pin) under other ones.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from ptxfast.data import synth
from ptxfast.data.phantom import make_patient, make_phantom

# The libraries whose arithmetic or encoders reach the bytes, at the versions of the pins.
PINNED_UNDER = {
    "numpy": "2.4.6",
    "pillow": "13.0.0",
    "pydicom": "3.0.2",
    "pylibjpeg-openjpeg": "2.6.0",
    "pylibjpeg-rle": "2.2.0",
}

# (seed, size, n_ptx, keyword arguments): sizes below, at and above the anatomy (256) and
# vessel (512) resolutions, every site, forced and unforced confounders, a given patient.
PHANTOMS = {
    "64-negative": (0, 64, 0, {}),
    "128-one": (1, 128, 1, {}),
    "128-two": (2, 128, 2, {}),
    "64-lateral-no-confounders": (
        3,
        64,
        1,
        {"sites": ("lateral",), "chest_tube": False, "ecg": False, "skin_fold": False},
    ),
    "300-large-all-confounders": (
        5,
        300,
        1,
        {"sites": ("large",), "chest_tube": True, "ecg": True, "skin_fold": True},
    ),
    "600-apical-basal": (7, 600, 2, {"sites": ("apical", "basal")}),
    "256-apicolateral-patient": (11, 256, 1, {"sites": ("apicolateral",), "patient": 12}),
}

PHANTOM_SHA256 = {
    "64-negative": "18f548f2227baf2d3dd29a666372cf04a625b8feaeefcbafd579ac7d98508f8f",
    "128-one": "02b52a18dbdf28d642a7d877bc9d1efb4f33d17bb4e7025f3b11b2e2fad4c12c",
    "128-two": "7b6309f1b3cc9b6187c75b6d05434f7ea8d395b8ec81e9cca7332e8facd13d22",
    "64-lateral-no-confounders": "98e4feac1d400c1e522c4424d3b25fd2ae1ff235b35e2732e517078b784f1a86",
    "300-large-all-confounders": "78eaf7263f7fb056a9dbb52936ab202b75088e66a88883fdb7da2c382152b0e8",
    "600-apical-basal": "c0ae71bb2440f3cfb92509b7f7f2fe1a317e6029a6fff8b4ddecc2d088926643",
    "256-apicolateral-patient": "f017eb270db33019de1b1c2f1969d96c9ce7c3fe714c309aed72d36a5fd8d1c5",
}

# (n, seed, size, positive_rate, fmt): 40 images hold every transfer syntax (explicit and
# implicit little endian, RLE, JPEG 2000), both photometrics, CR and DX, and rescaled CR.
DATASETS = {
    "candid": (40, 3, 32, 0.5, "candid"),
    "siim": (12, 4, 32, 0.5, "siim"),
}

DATASET_SHA256 = {
    "candid": "cf5570d3483ba9b5191bdd2247c9288556b876731cb82b2ad0f0729fd73763db",
    "siim": "42b2e590ff5e289e7d702f535f9ad84867eb7ad239b3efabb632be9b74e2517d",
}


def _versions() -> dict[str, str]:
    return {name: version(name) for name in PINNED_UNDER}


@pytest.fixture(autouse=True)
def _same_libraries():
    now = _versions()
    if now != PINNED_UNDER:
        pytest.skip(
            f"checksums were pinned under {PINNED_UNDER}, this environment has {now}; "
            "re-pin them from the code at a known-good commit (print_pins() in this file)"
        )


def phantom_digest(name: str) -> str:
    """sha256 over a phantom's pixels, each mask's bits and the text of its findings."""
    seed, size, n_ptx, kwargs = PHANTOMS[name]
    kwargs = dict(kwargs)
    if "patient" in kwargs:
        kwargs["patient"] = make_patient(np.random.default_rng(kwargs["patient"]))
    image, masks, meta = make_phantom(np.random.default_rng(seed), size, n_ptx, **kwargs)
    h = hashlib.sha256(image.tobytes())
    for mask in masks:
        h.update(np.packbits(mask).tobytes())
    h.update(repr(meta).encode())
    return h.hexdigest()


def dataset_digest(out: Path) -> str:
    """sha256 over every file `write_dataset` left under `out` (relative path and bytes)."""
    h = hashlib.sha256()
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        h.update(path.relative_to(out).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _write(name: str, out: Path) -> synth.SynthSummary:
    n, seed, size, rate, fmt = DATASETS[name]
    return synth.write_dataset(out, n, seed, size=size, positive_rate=rate, fmt=fmt, workers=1)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, tuple[Path, synth.SynthSummary]]:
    """Each pinned dataset, written once for the tests below."""
    root = tmp_path_factory.mktemp("pinned")
    return {name: (root / name, _write(name, root / name)) for name in DATASETS}


@pytest.mark.parametrize("name", sorted(PHANTOMS))
def test_phantom_pixels_masks_and_findings_are_pinned(name):
    assert phantom_digest(name) == PHANTOM_SHA256[name]


def test_pinned_candid_set_holds_every_dicom_flavour(written):
    _, summary = written["candid"]
    assert set(summary.transfer_syntaxes) == {"explicit", "implicit", "rle", "j2k"}
    assert set(summary.photometric) == {"MONOCHROME1", "MONOCHROME2"}
    assert set(summary.modalities) == {"CR", "DX"}
    n, seed, size, rate, fmt = DATASETS["candid"]
    jobs = synth.plan_dataset(n, seed, size, rate, fmt)
    assert any(j.rescale not in (None, (1.0, 0.0)) for j in jobs)
    assert any(j.n_ptx == 2 for j in jobs)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_synth_files_are_pinned(name, written):
    assert dataset_digest(written[name][0]) == DATASET_SHA256[name]


def print_pins(tmp: Path) -> None:
    """Print the checksums of the current code (to paste above when re-pinning)."""
    print({name: phantom_digest(name) for name in sorted(PHANTOMS)})
    for name in sorted(DATASETS):
        _write(name, tmp / name)
        print(name, dataset_digest(tmp / name))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print_pins(Path(tmp))
