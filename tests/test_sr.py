"""DICOM SR per scored image: it reads back with highdicom and pydicom, references its source
(and the SEG of a positive), carries the probability, the finding at the label threshold and
the model's identity, and passes dciodvfy where Debian's dicom3tools is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dicom_factory as F
import numpy as np
import pydicom
import pytest
from pydicom import uid

from ptxfast.score import dicom_out as outputs

SHA = "0123456789abcdef" * 4
MODEL = outputs.ModelIdentity("rn34un", "torchscript", "fp32", SHA, 0.3, label_threshold=0.3)


def items(ds) -> list[tuple[str, object]]:
    """(concept name meaning, value) of every content item of an SR, depth first."""
    found = []
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        kind = item.ValueType
        if kind == "TEXT":
            value = item.TextValue
        elif kind == "CODE":
            value = item.ConceptCodeSequence[0].CodeMeaning
        elif kind == "NUM":
            value = float(item.MeasuredValueSequence[0].NumericValue)
        elif kind == "IMAGE":
            value = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        elif kind == "UIDREF":
            value = item.UID
        else:
            value = None
        found.append((name, value))
        found += items(item)
    return found


def read_back(path: Path) -> dict[str, object]:
    """What an SR says, through highdicom's template accessors and the raw content tree."""
    import highdicom as hd

    sr = hd.sr.srread(path)
    assert sr.SOPClassUID == uid.Comprehensive3DSRStorage
    report = sr.content
    (group,) = report.get_image_measurement_groups()
    (m,) = group.get_measurements()
    finding = {
        q.name.meaning: q.value.meaning
        for q in group.get_qualitative_evaluations()
        if q.name.meaning == "Pneumothorax"
    }
    tree = items(pydicom.dcmread(path))
    evidence = {
        s.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for s in series.ReferencedSOPSequence
    }
    segments = [
        g.referenced_segment for g in report.get_volumetric_roi_measurement_groups()
    ]  # fmt: skip
    return {
        "sr": sr,
        "probability": m.value,
        "unit": m.unit.value,
        "finding": finding["Pneumothorax"],
        "source": group.source_images[0].referenced_sop_instance_uid,
        "evidence": evidence,
        "algorithm": dict((k, v) for k, v in tree if k in ("Algorithm Name", "Algorithm Version")),
        "segments": [
            (s.referenced_sop_instance_uid, s.referenced_segment_numbers)
            for s in segments
            if s is not None
        ],
    }


def dciodvfy_errors(path: Path) -> list[str] | None:
    """dciodvfy's error lines for `path`, None when dciodvfy is not installed."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        return None
    res = subprocess.run([tool, str(path)], capture_output=True, text=True)
    return [line for line in (res.stdout + res.stderr).splitlines() if "Error" in line]


def test_sr_of_a_positive_with_its_seg_and_of_a_negative(tmp_path):
    ds = F.image_dataset(F.gray_pixels(64, 64), bits_stored=12)
    del ds.PatientID  # Type 2 attributes a source lacks are written empty, not refused
    src_path = F.save(ds, tmp_path / "src.dcm")
    source = pydicom.dcmread(src_path)
    mask = np.zeros((64, 64), bool)
    mask[10:30, 5:20] = True
    seg_path = outputs.write_dicom_seg(source, mask, tmp_path / "seg.dcm", MODEL)
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    header = pydicom.dcmread(src_path, stop_before_pixels=True)
    pos = outputs.write_dicom_sr(header, tmp_path / "pos.dcm", MODEL, 0.8125, True, seg=seg)
    neg = outputs.write_dicom_sr(header, tmp_path / "neg.dcm", MODEL, 0.0625, False)

    p, n = read_back(pos), read_back(neg)
    assert (p["probability"], p["finding"], p["unit"]) == (0.8125, "Present", "1")
    assert (n["probability"], n["finding"], n["unit"]) == (0.0625, "Absent", "1")
    for r in (p, n):
        sr = r["sr"]
        assert r["source"] == source.SOPInstanceUID
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        assert source.SOPInstanceUID in r["evidence"]
        assert sr.Modality == "SR" and sr.SeriesInstanceUID != source.SeriesInstanceUID
        assert r["algorithm"] == {"Algorithm Name": "ptxfast rn34un", "Algorithm Version": SHA}
    assert p["segments"] == [(seg.SOPInstanceUID, [1])] and seg.SOPInstanceUID in p["evidence"]
    assert n["segments"] == [] and len(n["evidence"]) == 1
    for path in (pos, neg):
        errors = dciodvfy_errors(path)
        if errors is None:
            pytest.skip("dciodvfy (Debian dicom3tools) not installed; SR not validated")
        assert not errors, f"{path.name}: {errors}"


# ------------------------------------------------------------------- written by the scorer

HEAD_BIAS = -11.85  # the random model's scores of these phantoms straddle its threshold


def _score(root: Path, out: Path, artifact: str, *extra: str):
    """`ptxfast score --masks --dicom-seg --dicom-sr` of `root` into `out`: (rows, summary
    JSON, printed output)."""
    import csv
    import json

    from click.testing import CliRunner

    from ptxfast.cli import cli

    args = [
        "score", str(root), "--out", str(out / "preds.csv"), "--json", str(out / "s.json"),
        "--model", artifact, "--device", "cpu", "--batch-size", "2", "--workers", "0",
        "--model-only-iters", "0", "--masks", str(out / "masks"),
        "--dicom-seg", str(out / "seg"), "--dicom-sr", str(out / "sr"), *extra,
    ]  # fmt: skip
    # A wide console: the summary table would wrap "DICOM SR" under long temporary paths.
    res = CliRunner().invoke(cli, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    with open(out / "preds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((out / "s.json").read_text()), res.output


@pytest.fixture(scope="module")
def scored(rn34un_artifact, tmp_path_factory):
    """`ptxfast score --masks --dicom-sr --dicom-seg` over phantoms, a PNG and a truncated
    DICOM, with the default output-writing processes."""
    from PIL import Image

    from ptxfast.data import synth

    root = tmp_path_factory.mktemp("in")
    synth.write_dataset(root / "ph", 8, seed=3, size=64, positive_rate=0.5, workers=1)
    for p in list((root / "ph").glob("*.csv")) + list((root / "ph").glob("*.json")):
        p.unlink()
    Image.fromarray(np.full((40, 48), 90, np.uint8)).save(root / "photo.png")
    bad = F.save(F.image_dataset(F.gray_pixels(64, 64), bits_stored=12), root / "trunc.dcm")
    bad.write_bytes(bad.read_bytes()[:-3000])
    out = tmp_path_factory.mktemp("out")
    rows, summary, output = _score(root, out, str(rn34un_artifact(head_bias=HEAD_BIAS)))
    return root, out, rows, summary, output


def test_output_threads_write_what_output_processes_write(scored, rn34un_artifact, tmp_path):
    from PIL import Image

    root, out, rows, summary, _ = scored
    assert summary["output_workers"] >= 1  # the default: writing processes
    rows_t, summary_t, _ = _score(
        root, tmp_path, str(rn34un_artifact(head_bias=HEAD_BIAS)), "--output-workers", "0"
    )
    assert summary_t["output_workers"] == 0
    assert rows_t == rows
    counts = ("masks_written", "segs_written", "srs_written", "seg_not_dicom", "sr_not_dicom",
              "names_replaced", "output_errors")  # fmt: skip
    assert {k: summary_t[k] for k in counts} == {k: summary[k] for k in counts}
    assert summary["masks_written"] > 0 and summary["srs_written"] > 0
    for folder in ("masks", "seg", "sr"):
        names = sorted(p.relative_to(out / folder) for p in (out / folder).rglob("*.*"))
        assert names == sorted(p.relative_to(tmp_path / folder)
                               for p in (tmp_path / folder).rglob("*.*")), folder  # fmt: skip
    for p in (out / "masks").rglob("*.png"):
        other = tmp_path / "masks" / p.relative_to(out / "masks")
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(other))), p.name
    for p in (out / "seg").glob("*.dcm"):
        a, b = pydicom.dcmread(p), pydicom.dcmread(tmp_path / "seg" / p.name)
        assert np.array_equal(a.pixel_array, b.pixel_array), p.name


def test_every_scored_dicom_has_an_sr_that_matches_its_row(scored, rn34un_artifact):
    import json

    root, out, rows, summary, output = scored
    dicoms = [r for r in rows if r["probability"] and r["sop_instance_uid"]]
    labels = {r["label"] for r in dicoms}
    assert labels == {"0", "1"}, "the test needs positives and negatives"
    srs = sorted((out / "sr").glob("*.dcm"))
    assert [p.name for p in srs] == sorted(f"{r['sop_instance_uid']}.dcm" for r in dicoms)
    assert summary["srs_written"] == len(dicoms) and summary["sr_not_dicom"] == 1  # the PNG
    assert not summary["output_errors"] and "DICOM SR" in output
    sha = json.loads(Path(rn34un_artifact(head_bias=HEAD_BIAS)).read_text())["sha256"]
    for r in dicoms:
        got = read_back(out / "sr" / f"{r['sop_instance_uid']}.dcm")
        source = pydicom.dcmread(root / r["path"], stop_before_pixels=True)
        assert got["source"] == r["sop_instance_uid"] == source.SOPInstanceUID
        assert got["sr"].StudyInstanceUID == source.StudyInstanceUID
        assert got["probability"] == pytest.approx(float(r["probability"]), abs=1e-6)
        assert got["finding"] == ("Present" if r["label"] == "1" else "Absent")
        assert got["algorithm"] == {"Algorithm Name": "ptxfast rn34un", "Algorithm Version": sha}
        if r["label"] == "1":  # its SEG, referenced and listed as evidence
            seg = pydicom.dcmread(out / "seg" / f"{r['sop_instance_uid']}.dcm")
            assert got["segments"] == [(seg.SOPInstanceUID, [1])]
            assert seg.SOPInstanceUID in got["evidence"]
        else:
            assert got["segments"] == []
    for path in srs:
        errors = dciodvfy_errors(path)
        if errors is None:
            pytest.skip("dciodvfy (Debian dicom3tools) not installed; SR not validated")
        assert not errors, f"{path.name}: {errors}"
