"""Synthetic phantoms: the generator, the CANDID-PTX / SIIM-ACR layouts, DICOM variety, CLI."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    JPEG2000Lossless,
    RLELossless,
)

from ptxfast.cli import cli
from ptxfast.data import synth
from ptxfast.data.dicom import read_image
from ptxfast.data.phantom import MAX_VALUE, make_phantom
from ptxfast.data.phantom.pneumothorax import draw_ptx
from ptxfast.data.rle import decode
from ptxfast.data.synth.pixels import display_window

SIZE = 64


def _air_level(img: np.ndarray) -> float:
    """Median of the two bottom corners, which lie outside the body (air, the darkest)."""
    c = max(2, img.shape[0] // 12)
    return float(np.median(np.concatenate([img[-c:, :c].ravel(), img[-c:, -c:].ravel()])))


def _rows(out: Path) -> list[dict]:
    with open(out / synth.CANDID_CSV, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def candid(tmp_path_factory) -> tuple[Path, synth.SynthSummary]:
    """40 images at 64², half positive: enough for every DICOM flavour and a two-PTX image."""
    out = tmp_path_factory.mktemp("candid") / "ph"
    return out, synth.write_dataset(out, 40, seed=0, size=SIZE, positive_rate=0.5, workers=1)


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("n_ptx", [0, 1, 2])
def test_make_phantom_image_and_masks(size, n_ptx):
    img, masks, meta = make_phantom(np.random.default_rng(size + n_ptx), size, n_ptx)
    assert img.dtype == np.uint16 and img.shape == (size, size)
    assert img.max() <= MAX_VALUE and img.max() > 2000  # uses the 12-bit range
    assert len(masks) == n_ptx == len(meta.pneumothoraces)
    air = _air_level(img)
    union = np.zeros((size, size), dtype=bool)
    for m, p in zip(masks, meta.pneumothoraces, strict=True):
        assert m.dtype == bool and m.shape == (size, size)
        assert m.any() and int(m.sum()) == p.area_px
        assert not (m & union).any()  # two pneumothoraces are two regions
        union |= m
        # Inside the body: well above the air outside it, and away from the image border.
        assert img[m].mean() > air + 150
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
        assert p.side in ("left", "right") and p.size in ("small", "moderate", "large")


@pytest.mark.parametrize("seed", [3, 4])
def test_pneumothorax_changes_only_its_region(seed):
    """Same seed with and without a PTX: identical far from it, darker and smoother inside."""
    ndi = pytest.importorskip("scipy.ndimage")
    size = 256
    img0, _, _ = make_phantom(np.random.default_rng(seed), size, 0)
    img1, (mask,), _ = make_phantom(np.random.default_rng(seed), size, 1, sites=("apical",))
    far = ~ndi.binary_dilation(mask, iterations=12)
    np.testing.assert_array_equal(img0[far], img1[far])
    assert img1[mask].mean() < img0[mask].mean() - 100

    img2, (big,), _ = make_phantom(np.random.default_rng(seed), size, 1, sites=("large",))
    core = ndi.binary_erosion(big, iterations=4)

    def detail(img):  # lung markings: fine structure left after removing the smooth background
        f = img.astype(np.float64)
        return (ndi.uniform_filter(f, 2) - ndi.uniform_filter(f, 5))[core].std()

    assert core.sum() > 300
    assert detail(img2) < 0.9 * detail(img0)


@pytest.mark.parametrize("site", ["apical", "lateral", "large"])
def test_pneumothorax_is_more_lucent_than_lung_but_not_air(site):
    """Pleural air replaces lung: the space loses a good share of the lung's brightness above
    air (no parenchyma, no markings), yet the chest walls keep it well above the air outside."""
    img0, _, _ = make_phantom(np.random.default_rng(5), 256, 0)
    img1, (mask,), _ = make_phantom(np.random.default_rng(5), 256, 1, sites=(site,))
    air, lung, ptx = _air_level(img0), img0[mask].mean(), img1[mask].mean()
    assert 0.3 < (lung - ptx) / (lung - air) < 0.8
    assert ptx > air + 150


def test_pneumothorax_sizes_are_mostly_moderate_to_large():
    """Like annotated sets (CANDID-PTX's smallest masks are ~375 px at 512²): small rims exist,
    but most are deep enough to show at the 96–128 px a CPU trains at."""
    rng = np.random.default_rng(0)
    geoms = [draw_ptx(rng, 0, None) for _ in range(2000)]
    depth_mm = np.array([g.depth for g in geoms]) * 1024 * 0.35
    assert 0.08 < (depth_mm < 10).mean() < 0.25  # small ones
    assert (depth_mm >= 15).mean() > 0.6 and np.median(depth_mm) > 15
    assert 0.2 < np.mean([g.site == "large" for g in geoms]) < 0.4


def test_confounders_can_be_forced_without_a_pneumothorax():
    img, masks, meta = make_phantom(
        np.random.default_rng(1), 256, 0, chest_tube=True, ecg=True, skin_fold=True
    )
    assert masks == [] and meta.pneumothoraces == []
    assert meta.chest_tube in ("left", "right") and meta.skin_fold in ("left", "right")
    assert meta.ecg_leads >= 2
    plain, _, _ = make_phantom(
        np.random.default_rng(1), 256, 0, chest_tube=False, ecg=False, skin_fold=False
    )
    extra = img.astype(np.int32) - plain
    assert extra.min() >= 0 and extra.max() > 300  # tubes, wires and folds only add density
    assert 0.005 < (extra > 30).mean() < 0.25


def test_make_phantom_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_ptx"):
        make_phantom(np.random.default_rng(0), 64, 3)
    with pytest.raises(ValueError, match="size"):
        make_phantom(np.random.default_rng(0), 16, 0)


# ----------------------------------------------------------------------------- CANDID layout


def test_candid_csv_layout(candid):
    out, summary = candid
    text = (out / synth.CANDID_CSV).read_text()
    assert text.splitlines()[0] == "filename,SOPInstanceUID,StudyInstanceUID,EncodedPixels,Report"
    rows = _rows(out)
    assert len(rows) == summary.n_rows
    by_file = defaultdict(list)
    for r in rows:
        by_file[r["filename"]].append(r)
        assert re.fullmatch(r"P\d+_\d\.dcm", r["filename"])
        assert r["Report"].strip().endswith(".")
    assert len(by_file) == summary.n_images == 40
    assert (
        sum(1 for rs in by_file.values() if rs[0]["EncodedPixels"] != "-1")
        == summary.n_positive
        == 20
    )
    per_patient = Counter(f.split("_")[0] for f in by_file)
    assert set(per_patient.values()) <= {1, 2, 3, 4} and max(per_patient.values()) > 1
    assert len(per_patient) == summary.n_patients
    for name, rs in by_file.items():
        ds = pydicom.dcmread(out / "images" / name, stop_before_pixels=True)
        assert {r["SOPInstanceUID"] for r in rs} == {ds.SOPInstanceUID}
        assert {r["StudyInstanceUID"] for r in rs} == {ds.StudyInstanceUID}
        assert ds.PatientID == name.split("_")[0]
        negative = rs[0]["EncodedPixels"] == "-1"
        assert ("pneumothora" in rs[0]["Report"].lower()) and (
            negative == ("No " in rs[0]["Report"])
        )
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(by_file)


def test_candid_positive_masks_decode_inside_the_body(candid):
    out, _ = candid
    for r in _rows(out):
        if r["EncodedPixels"] == "-1":
            continue
        mask = decode(r["EncodedPixels"], (SIZE, SIZE))
        assert mask.any()
        img = pydicom.dcmread(out / "images" / r["filename"])
        shown = read_image(out / "images" / r["filename"])
        assert img.Rows == img.Columns == SIZE
        assert shown[mask].mean() > _air_level(shown) + 0.05


def test_two_pneumothoraces_make_two_rows(candid):
    out, summary = candid
    rows = _rows(out)
    groups = defaultdict(list)
    for r in rows:
        groups[r["filename"]].append(r)
    doubles = [rs for rs in groups.values() if len(rs) == 2]
    assert len(doubles) == round(20 * 0.1) == summary.n_rows - summary.n_images
    for a, b in doubles:
        assert a["SOPInstanceUID"] == b["SOPInstanceUID"] and a["Report"] == b["Report"]
        ma, mb = decode(a["EncodedPixels"], (SIZE, SIZE)), decode(b["EncodedPixels"], (SIZE, SIZE))
        assert ma.any() and mb.any() and not (ma & mb).any()


def test_dicom_variety(candid):
    out, summary = candid
    seen = Counter()
    for path in sorted((out / "images").glob("*.dcm")):
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        seen[ds.Modality] += 1
        seen[ds.PhotometricInterpretation] += 1
        seen[ds.file_meta.TransferSyntaxUID] += 1
        assert ds.SOPClassUID == (
            DigitalXRayImageStorageForPresentation
            if ds.Modality == "DX"
            else ComputedRadiographyImageStorage
        )
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16,
            12,
            11,
            0,
        )
        assert (
            "WindowCenter" in ds and "WindowWidth" in ds and ds.PatientID and ds.SeriesInstanceUID
        )
        assert len(ds.PixelSpacing) == 2
        if ds.Modality == "DX":  # DX fixes rescale to identity
            assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
        elif "RescaleSlope" in ds and float(ds.RescaleSlope) != 1.0:
            seen["rescaled"] += 1
        arr = ds.pixel_array
        assert arr.shape == (SIZE, SIZE) and arr.max() <= MAX_VALUE
    assert seen["CR"] and seen["DX"] and seen["MONOCHROME1"] and seen["MONOCHROME2"]
    assert seen[JPEG2000Lossless] and seen[RLELossless] and seen["rescaled"]
    assert summary.transfer_syntaxes["explicit"] > 40 // 2  # most files stay uncompressed


def test_every_flavour_displays_the_same_picture(candid):
    """MONOCHROME1, rescale and compression are undone by the reader: lungs stay dark."""
    out, _ = candid
    jobs = synth.plan_dataset(40, 0, SIZE, 0.5, "candid", out)
    checked = Counter()
    for job in jobs:
        image, _, _, _ = synth.render(job)
        center, width = display_window(image)
        expected = np.clip((image.astype(np.float32) - (center - width / 2)) / width, 0, 1)
        shown = read_image(out / "images" / f"P{job.patient}_{job.k}.dcm")
        np.testing.assert_allclose(shown, expected, atol=0.02)
        checked[job.photometric] += 1
        checked[job.syntax] += 1
        checked["rescaled"] += job.rescale not in (None, (1.0, 0.0))
        # Air (outside the body) is dark and the mediastinum bright, whatever was stored.
        assert (
            _air_level(shown)
            < 0.2
            < shown[SIZE // 3 : SIZE // 2, SIZE // 2 - 2 : SIZE // 2 + 2].mean()
        )
    assert checked["MONOCHROME1"] and checked["j2k"] and checked["rle"] and checked["rescaled"]


def test_sources_are_valid_for_highdicom_segmentations(candid):
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    out, _ = candid
    for r in _rows(out)[:4]:
        ds = pydicom.dcmread(out / "images" / r["filename"])
        mask = (
            decode(r["EncodedPixels"], (SIZE, SIZE))
            if r["EncodedPixels"] != "-1"
            else np.zeros((SIZE, SIZE), bool)
        )
        mask[0, 0] = True
        desc = hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="pneumothorax",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Pneumothorax,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        seg = hd.seg.Segmentation(
            source_images=[ds],
            pixel_array=mask,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[desc],
            series_instance_uid=hd.UID(),
            series_number=2,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="ptxfast",
            manufacturer_model_name="test",
            software_versions="0",
            device_serial_number="0",
        )
        assert seg.PatientID == ds.PatientID


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed"
)
def test_dciodvfy_accepts_the_files(candid):
    out, _ = candid
    for path in sorted((out / "images").glob("*.dcm"))[:12]:
        res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


def test_datasets_reads_the_phantoms(candid):
    datasets = pytest.importorskip("ptxfast.data.datasets")
    out, summary = candid
    records = datasets.load_records(out)
    assert len(records) == summary.n_images
    assert sum(r.label for r in records) == summary.n_positive
    assert sum(len(r.rles) for r in records) == summary.n_rows - (
        summary.n_images - summary.n_positive
    )


# ----------------------------------------------------------------------------- determinism


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    a = synth.write_dataset(tmp_path / "a", 8, seed=3, size=SIZE, positive_rate=0.5, workers=1)
    synth.write_dataset(tmp_path / "b", 8, seed=3, size=SIZE, positive_rate=0.5, workers=2)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa.keys() == fb.keys() and len(fa) == 8 + 2  # images, CSV, manifest
    assert fa == fb
    assert a.n_positive == 4


def test_different_seed_differs(tmp_path):
    synth.write_dataset(tmp_path / "a", 6, seed=1, size=SIZE, workers=1)
    synth.write_dataset(tmp_path / "b", 6, seed=2, size=SIZE, workers=1)
    assert (tmp_path / "a" / synth.CANDID_CSV).read_bytes() != (
        tmp_path / "b" / synth.CANDID_CSV
    ).read_bytes()
    pa = pydicom.dcmread(tmp_path / "a" / "images" / "P1_1.dcm")
    pb = pydicom.dcmread(tmp_path / "b" / "images" / "P1_1.dcm")
    assert pa.SOPInstanceUID != pb.SOPInstanceUID
    assert not np.array_equal(pa.pixel_array, pb.pixel_array)


# ----------------------------------------------------------------------------- SIIM layout


def test_siim_layout(tmp_path):
    out = tmp_path / "siim"
    s = synth.write_dataset(out, 10, seed=4, size=SIZE, positive_rate=0.5, fmt="siim", workers=1)
    lines = (out / "train-rle.csv").read_text().splitlines()
    assert lines[0] == "ImageId, EncodedPixels"
    assert len(lines) == 1 + s.n_rows
    ids = set()
    for line in lines[1:]:
        image_id, rle = line.split(",")
        assert rle.startswith(" ")
        if rle == " -1":
            continue
        assert decode(rle, (SIZE, SIZE)).any()
        ids.add(image_id)
    files = sorted((out / "dicom-images-train").rglob("*.dcm"))
    assert len(files) == 10 and not (out / "images").exists()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study, series = path.parent.parent.name, path.parent.name
        assert (study, series, path.stem) == (
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
        )
        assert re.fullmatch(r"[0-9a-f-]{36}", ds.PatientID)
    assert ids <= {p.stem for p in files} and len(ids) == s.n_positive


# ----------------------------------------------------------------------------- output folder, CLI


def test_refuses_a_folder_holding_something_else(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(synth.SynthError, match="not empty.*--overwrite"):
        synth.write_dataset(tmp_path, 4, seed=0, size=SIZE, workers=1)
    synth.write_dataset(tmp_path / "ds", 4, seed=0, size=SIZE, workers=1)
    synth.write_dataset(tmp_path / "ds", 4, seed=0, size=SIZE, workers=1)  # the same dataset: fine
    with pytest.raises(synth.SynthError, match="different synthetic dataset"):
        synth.write_dataset(tmp_path / "ds", 4, seed=1, size=SIZE, workers=1)
    (tmp_path / "ds" / "splits.csv").write_text("stale")
    synth.write_dataset(tmp_path / "ds", 3, seed=1, size=SIZE, workers=1, overwrite=True)
    assert len(list((tmp_path / "ds" / "images").iterdir())) == 3
    assert not (tmp_path / "ds" / "splits.csv").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_synth_with_preview(tmp_path):
    out, png = tmp_path / "ph", tmp_path / "ph" / "preview.png"
    runner = CliRunner()
    args = [
        "synth",
        str(out),
        "--n",
        "6",
        "--seed",
        "2",
        "--size",
        str(SIZE),
        "--positive-rate",
        "0.5",
    ]
    res = runner.invoke(cli, [*args, "--preview", str(png), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "6 (3 with pneumothorax" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(_rows(out)) >= 6
    res = runner.invoke(cli, ["synth", str(out), "--n", "6", "--seed", "3", "--size", str(SIZE)])
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = runner.invoke(
        cli,
        [
            "synth",
            str(out),
            "--n",
            "5",
            "--seed",
            "3",
            "--size",
            str(SIZE),
            "--format",
            "siim",
            "--overwrite",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "train-rle.csv").exists() and not (out / synth.CANDID_CSV).exists()


def test_preview_of_a_siim_folder(tmp_path):
    out = tmp_path / "siim"
    synth.write_dataset(out, 4, seed=5, size=SIZE, positive_rate=0.5, fmt="siim", workers=1)
    png = synth.write_preview(out, tmp_path / "p.png", n=4)
    assert png.stat().st_size > 1000
    with pytest.raises(synth.SynthError, match="run `ptxfast synth"):
        synth.write_preview(tmp_path / "nothing", tmp_path / "q.png")
