"""The eligibility rule: which headers say "chest radiograph", checked before decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import gray_pixels, image_dataset, save, structured_report
from PIL import Image

from ptxfast.data.dicom import ImageReadError, NotEligible, load_image
from ptxfast.data.eligibility import check, not_eligible_message


@pytest.mark.parametrize(
    "modality, view, part, eligible, reason",
    [
        ("CR", "PA", "CHEST", True, None),
        ("DX", "AP", None, True, None),
        ("DR", None, "THORAX", True, None),
        ("CT", None, "CHEST", False, "Modality CT"),
        ("MR", None, None, False, "Modality MR"),
        ("US", None, None, False, "Modality US"),
        ("NM", None, None, False, "Modality NM"),
        ("PT", None, None, False, "Modality PT"),
        ("RTDOSE", None, None, False, "Modality RTDOSE"),
        ("SR", None, None, False, "Modality SR"),
        ("SEG", None, None, False, "Modality SEG"),
        ("ECG", None, None, False, "Modality ECG"),
        ("MG", None, "BREAST", False, "Modality MG"),
        ("DX", "LL", "CHEST", False, "ViewPosition LL (lateral)"),
        ("CR", "rld", None, False, "ViewPosition RLD (lateral)"),
        ("DX", "LLD", None, False, "ViewPosition LLD (lateral)"),
        ("DX", "PA", "KNEE", False, "BodyPartExamined KNEE"),
        ("CR", None, "L SPINE", False, "BodyPartExamined L SPINE"),
        ("CR", None, "PORTABLE", True, None),  # free text we cannot place: scored
        ("CR", None, "PORT CHEST", True, None),
        ("dx", "pa", "chest", True, None),  # case and spacing do not matter
    ],
)
def test_default_rule(modality, view, part, eligible, reason):
    v = check(modality, view, part)
    assert (v.eligible, v.reason) == (eligible, reason)


def test_silent_headers_png_strict_and_off():
    assert check(None).eligible and check(None).note == "no Modality: not checked"
    assert check("OT").eligible and "Modality OT" in check("OT").note
    assert check(None, dicom=False).eligible and "PNG/JPEG" in check(None, dicom=False).note
    # strict wants the header to say it: CR/DX/DR, PA/AP, chest.
    assert not check(None, rule="strict").eligible
    assert not check(None, dicom=False, rule="strict").eligible
    assert not check("DX", "LAO", None, rule="strict").eligible
    assert not check("DX", "PA", "L SPINE", rule="strict").eligible
    assert check("DX", "PA", "CHEST", rule="strict") == check("DX", rule="strict")
    assert check("CT", "LL", "HEAD", rule="off").eligible
    with pytest.raises(ValueError, match="choose one of strict, default, off"):
        check("CR", rule="lenient")


def _dicom(path: Path, modality: str, view: str | None = None, part: str | None = None) -> Path:
    ds = image_dataset(gray_pixels(32, 32))
    ds.Modality = modality
    if view:
        ds.ViewPosition = view
    if part:
        ds.BodyPartExamined = part
    return save(ds, path)


def test_load_image_refuses_before_decoding(tmp_path):
    ct = _dicom(tmp_path / "ct.dcm", "CT", part="HEAD")
    with pytest.raises(NotEligible) as err:
        load_image(ct, 16, eligibility="default")
    assert err.value.reason == "Modality CT"
    assert str(err.value) == f"{ct}: {not_eligible_message('Modality CT')}"
    assert "--eligibility off to score anyway" in str(err.value)
    # off decodes it like any image
    img, _ = load_image(ct, 16, eligibility="off")
    assert img.shape == (16, 16)
    # An SR has no pixels: it is refused as not eligible, before "no pixel data".
    sr = structured_report(tmp_path / "sr.dcm")
    with pytest.raises(NotEligible, match="Modality SR"):
        load_image(sr, 16, eligibility="default")
    with pytest.raises(ImageReadError, match="without pixel data"):
        load_image(sr, 16, eligibility="off")
    # The header decides, whatever the pixels: truncate the pixel data of a CT and the
    # verdict is the same (nothing past the header is read).
    raw = ct.read_bytes()
    broken = tmp_path / "broken_ct.dcm"
    broken.write_bytes(raw[: len(raw) - 600])
    with pytest.raises(NotEligible, match="Modality CT"):
        load_image(broken, 16, eligibility="default")


def test_radiographs_and_png_are_scored_with_notes(tmp_path):
    _, info = load_image(_dicom(tmp_path / "cr.dcm", "CR", "PA", "CHEST"), 16, eligibility="strict")
    assert info.eligibility_note is None
    png = tmp_path / "x.png"
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(png)
    _, info = load_image(png, 16, eligibility="default")
    assert "not checked" in info.eligibility_note
    with pytest.raises(NotEligible, match="no DICOM header"):
        load_image(png, 16, eligibility="strict")
