"""Pinned phantoms: the generator and `synth` draw the same pictures and write the same files per
seed, on every CPU.

The references in tests/pins/synth.npz were computed once and are kept, so a refactor of the
drawing or of the DICOM writer cannot change a phantom, a mask or a file unnoticed. They are
compared the way `float_checks` describes: pixels by a tile sketch that tolerates one grey level
of rounding in a few pixels, masks exactly but for threshold flips on their edge, findings and
headers exactly but for last-bit float noise. numpy's float kernels differ in the last bit
between SIMD levels (AVX-512, AVX2, baseline), which moves exactly that much; `.ci/run` runs
this file once more on numpy's baseline kernels so every machine checks a second level.

After a deliberate change to the drawing or the files, re-pin from the code:

    PYTHONPATH=. .venv/bin/python tests/test_synth_pinned.py
"""

from __future__ import annotations

import ast
import csv
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pydicom
import pytest
from float_checks import (
    MASK_FLIPS,
    PIXEL_FLIPS,
    image_problems,
    load_pins,
    mask_problems,
    outline,
    save_pins,
    tile_sketch,
    value_problems,
)
from pydicom.datadict import tag_for_keyword
from pydicom.uid import ExplicitVRLittleEndian

from ptxfast.data import rle, synth
from ptxfast.data.phantom import acquisition, attenuation, make_patient, make_phantom

PIN_FILE = Path(__file__).parent / "pins" / "synth.npz"
REPIN = "re-pin with `PYTHONPATH=. .venv/bin/python tests/test_synth_pinned.py`"

# The libraries whose arithmetic and drawing reach the pixels, at the release (major.minor) of
# the pins, named in a failure's message; files are compared by decoded values, so their
# encoders do not matter.
PINNED_UNDER = {"numpy": "2.4", "pillow": "13.0"}

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

# (n, seed, size, positive_rate, fmt): 40 images hold every transfer syntax (explicit and
# implicit little endian, RLE, JPEG 2000), both photometrics, CR and DX, and rescaled CR.
DATASETS = {
    "candid": (40, 3, 32, 0.5, "candid"),
    "siim": (12, 4, 32, 0.5, "siim"),
}

# Header elements computed from the pixels: the display window's percentiles move by at most
# the one grey level of rounding at each end.
_WINDOW = ("WindowCenter", "WindowWidth")
# File meta that names the writing library, not the phantom.
_FILE_META = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


def _release(name: str) -> str:
    return ".".join(version(name).split(".")[:2])


def _repin_hint() -> str:
    """What to do on a mismatch, with the libraries the pins were taken under and these: the
    comparison runs under any release (it holds up to rounding), so a failure after an upgrade
    says which one moved."""
    now = {name: _release(name) for name in PINNED_UNDER}
    moved = "" if now == PINNED_UNDER else f" (pinned under {PINNED_UNDER}, now {now})"
    return f"{REPIN}{moved}"


@pytest.fixture(scope="module")
def pins() -> tuple[dict, dict[str, np.ndarray]]:
    """The pinned references (doc, arrays)."""
    return load_pins(PIN_FILE)


def draw(name: str) -> tuple[np.ndarray, list[np.ndarray], dict]:
    """The named phantom now: (image, masks, findings as plain data)."""
    seed, size, n_ptx, kwargs = PHANTOMS[name]
    kwargs = dict(kwargs)
    if "patient" in kwargs:
        kwargs["patient"] = make_patient(np.random.default_rng(kwargs["patient"]))
    image, masks, meta = make_phantom(np.random.default_rng(seed), size, n_ptx, **kwargs)
    return image, masks, json.loads(json.dumps(asdict(meta)))


def phantom_problems(name: str, pins: tuple[dict, dict[str, np.ndarray]]) -> list[str]:
    """How the named phantom differs from its pin beyond the CPU's rounding (empty: not)."""
    doc, arrays = pins
    want = doc["phantoms"][name]
    image, masks, meta = draw(name)
    out = image_problems(f"{name} pixels", image, arrays[f"phantom:{name}"])
    out += value_problems(f"{name} masks", len(masks), len(want["masks"]))
    for i, (mask, pinned) in enumerate(zip(masks, want["masks"], strict=False)):
        out += mask_problems(f"{name} mask {i}", mask, pinned)
    return out + value_problems(f"{name} findings", meta, want["meta"], {"area_px": MASK_FLIPS})


def _header(ds: pydicom.Dataset) -> str:
    """Digest of the header without the pixel data and window (strings and exact numbers)."""
    header = ds.to_json_dict()
    for keyword in ("PixelData", *_WINDOW):
        header.pop(f"{tag_for_keyword(keyword):08X}", None)
    meta = {k: str(ds.file_meta[k].value) for k in _FILE_META}
    text = json.dumps([meta, header], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _csv_rows(path: Path) -> tuple[str, list[str]]:
    """(digest of every column but the masks, the masks' RLEs) of a layout's CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, skipinitialspace=True))
    col = rows[0].index("EncodedPixels")
    rest = [r[:col] + r[col + 1 :] for r in rows]
    return hashlib.sha256(json.dumps(rest).encode()).hexdigest()[:16], [r[col] for r in rows[1:]]


def dataset_record(out: Path) -> tuple[dict, list[np.ndarray]]:
    """What is pinned of a written dataset: per file its header digest, window and pixels (the
    pixels of the DICOM files in the order of their paths)."""
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    doc: dict = {"files": files, "dicom": {}, "other": {}}
    pixels = []
    for rel in files:
        path = out / rel
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            window = [float(getattr(ds, k)) for k in _WINDOW]
            doc["dicom"][rel] = {"header": _header(ds), "window": window}
            pixels.append(ds.pixel_array)
        elif path.suffix == ".csv":
            doc["csv"] = [rel, *_csv_rows(path)]
        else:
            doc["other"][rel] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return doc, pixels


def dataset_problems(name: str, out: Path, pins: tuple[dict, dict[str, np.ndarray]]) -> list[str]:
    """How the dataset written under `out` differs from its pin beyond the CPU's rounding."""
    doc, arrays = pins
    want = doc["datasets"][name]
    got, pixels = dataset_record(out)
    if got["files"] != want["files"]:
        return [f"{name}: files {got['files']} != pinned {want['files']}"]
    out_ = value_problems(f"{name} CSV", got["csv"][:2], want["csv"][:2])
    out_ += value_problems(f"{name} other files", got["other"], want["other"])
    size = DATASETS[name][2]
    for i, (have, pinned) in enumerate(zip(got["csv"][2], want["csv"][2], strict=True)):
        out_ += mask_problems(f"{name} CSV row {i + 1}", rle.decode(have, (size, size)), pinned)
    slack = {"window": 2.0}  # each end of the window one grey level off
    out_ += value_problems(f"{name}", got["dicom"], want["dicom"], slack)
    for rel, image, pinned in zip(got["dicom"], pixels, arrays[f"dataset:{name}"], strict=True):
        out_ += image_problems(f"{name} {rel} pixels", image, pinned)
    return out_


def _write(name: str, out: Path) -> synth.SynthSummary:
    n, seed, size, rate, fmt = DATASETS[name]
    return synth.write_dataset(out, n, seed, size=size, positive_rate=rate, fmt=fmt, workers=1)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, tuple[Path, synth.SynthSummary]]:
    """Each pinned dataset, written once for the tests below."""
    root = tmp_path_factory.mktemp("pinned")
    return {name: (root / name, _write(name, root / name)) for name in DATASETS}


@pytest.mark.parametrize("name", sorted(PHANTOMS))
def test_phantom_pixels_masks_and_findings_are_pinned(name, pins):
    problems = phantom_problems(name, pins)
    assert not problems, "\n".join([*problems, _repin_hint()])


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
def test_synth_files_are_pinned(name, written, pins):
    problems = dataset_problems(name, written[name][0], pins)
    assert not problems, "\n".join([*problems, _repin_hint()])


def test_one_anatomy_pixel_of_a_part_fails_the_pin(pins, monkeypatch):
    """A denser spine in one pixel of the anatomy grid (one image pixel at 64²) is caught."""
    spine = attenuation.spine

    def one_pixel_denser(ch, A):
        spine(ch, A)
        A[40, 32] += 0.01

    monkeypatch.setattr(attenuation, "spine", one_pixel_denser)
    problems = phantom_problems("64-negative", pins)
    assert len(problems) == 1 and problems[0].startswith("64-negative pixels:"), problems


def test_one_image_pixel_past_the_rounding_slack_fails_the_pin(pins, monkeypatch):
    noise = acquisition.detector_noise

    def one_pixel_brighter(rng, DF, grey):
        image = noise(rng, DF, grey)
        image[100, 50] += PIXEL_FLIPS + 1
        return image

    monkeypatch.setattr(acquisition, "detector_noise", one_pixel_brighter)
    assert phantom_problems("128-one", pins) == [
        "128-one pixels: 1 of 64 16x16 tiles differ beyond rounding; the first at rows 96-111,"
        f" columns 48-63 (sum off by {PIXEL_FLIPS + 1}, signed sum by {PIXEL_FLIPS + 1};"
        f" {PIXEL_FLIPS} allowed)"
    ]


def test_a_mask_moved_by_one_pixel_fails_the_pin(pins, monkeypatch):
    from ptxfast.data.phantom import pneumothorax

    draw_one = pneumothorax._draw_one
    monkeypatch.setattr(pneumothorax, "_draw_one", lambda *a: np.roll(draw_one(*a), 1, axis=1))
    problems = phantom_problems("256-apicolateral-patient", pins)
    assert any("mask 0:" in p for p in problems), problems


def test_a_file_with_one_pixel_or_one_header_word_changed_fails_the_pin(written, pins, tmp_path):
    copy = tmp_path / "candid"
    shutil.copytree(written["candid"][0], copy)
    plain = [
        p
        for p in sorted(copy.rglob("*.dcm"))
        if pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
        == ExplicitVRLittleEndian
    ]
    ds = pydicom.dcmread(plain[0])
    pixels = ds.pixel_array.copy()
    pixels[5, 7] += PIXEL_FLIPS + 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(plain[0])
    ds = pydicom.dcmread(plain[1])
    ds.ImageComments += " Stable."
    ds.save_as(plain[1])
    problems = dataset_problems("candid", copy, pins)
    assert len(problems) == 2, problems
    assert plain[0].name in problems[1] and "1 of 4 16x16 tiles" in problems[1]
    assert plain[1].name in problems[0] and ".header:" in problems[0]


def test_the_sketch_takes_rounding_but_not_a_moved_line():
    image = draw("128-one")[0]
    pinned = tile_sketch(image)
    rounded = image.copy()
    rng = np.random.default_rng(0)
    rows, cols = rng.choice(16, PIXEL_FLIPS, replace=False), rng.choice(16, PIXEL_FLIPS)
    rounded[32 + rows, 48 + cols] += rng.choice([-1, 1], PIXEL_FLIPS).astype(np.uint16)
    assert image_problems("rounded", rounded, pinned) == []
    line, moved = image.copy(), image.copy()
    line[:, 20] += 200
    moved[:, 21] += 200  # each tile's plain sum stays: the signed sums see the move
    line_pin = tile_sketch(line)
    assert (line_pin[0] == tile_sketch(moved)[0]).all()
    assert image_problems("moved", moved, line_pin) != []


def test_a_mask_may_flip_on_its_edge_only():
    mask = draw("128-one")[1][0]
    pinned = rle.encode(mask)
    rows, cols = np.nonzero(mask)
    edge = mask.copy()
    edge[rows[0], cols[0]] = False  # the first pixel in row order lies on the outline
    assert mask_problems("edge", edge, pinned) == []
    inside = mask.copy()
    inside[tuple(np.argwhere(mask & ~outline(mask))[0])] = False
    assert mask_problems("inside", inside, pinned) != []


@pytest.mark.skipif(
    "NPY_DISABLE_CPU_FEATURES" in os.environ, reason="numpy's kernels were chosen for this run"
)
def test_the_pins_hold_on_numpy_baseline_kernels():
    """The pinned tests once more on numpy's baseline kernels (every dispatched SIMD level
    disabled), so every machine checks the pins on two levels; an AVX2 or AVX-512 machine
    alone would not see that the pins hold on the other."""
    from numpy._core import _multiarray_umath

    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(_multiarray_umath.__cpu_dispatch__)}
    run = functools.partial(subprocess.run, env=env, capture_output=True, text=True)
    probe = "import numpy._core._multiarray_umath as m; print(m.__cpu_features__)"
    features = ast.literal_eval(run([sys.executable, "-c", probe], check=True).stdout)
    assert not any(features[k] for k in _multiarray_umath.__cpu_dispatch__)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "are_pinned"]
    done = run([*cmd, __file__], cwd=Path(__file__).parent.parent)
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0 and last.startswith("9 passed"), done.stdout[-3000:]


def repin() -> None:
    """Rewrite tests/pins/synth.npz from the code as it is now."""
    import tempfile

    doc: dict = {"phantoms": {}, "datasets": {}}
    arrays: dict[str, np.ndarray] = {}
    for name in sorted(PHANTOMS):
        image, masks, meta = draw(name)
        doc["phantoms"][name] = {"meta": meta, "masks": [rle.encode(m) for m in masks]}
        arrays[f"phantom:{name}"] = tile_sketch(image)
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(DATASETS):
            _write(name, Path(tmp) / name)
            doc["datasets"][name], pixels = dataset_record(Path(tmp) / name)
            arrays[f"dataset:{name}"] = np.stack([tile_sketch(p) for p in pixels])
    save_pins(PIN_FILE, doc, arrays)
    print(f"wrote {PIN_FILE} ({PIN_FILE.stat().st_size} bytes)")


if __name__ == "__main__":
    repin()
