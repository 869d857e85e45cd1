"""The two on-disk layouts synth writes: CANDID-PTX's and SIIM-ACR's file paths and CSVs.

CANDID-PTX keeps `images/P<patient>_<k>.dcm` and one CSV row per pneumothorax (filename,
UIDs, RLE, report); SIIM-ACR nests files by study and series and lists `ImageId, RLE`.
A negative image has one row with the RLE `-1` in both.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from ptxfast.data.synth.plan import ImagePlan, SynthError
from ptxfast.files import atomic_write

CANDID_CSV = "Pneumothorax_reports.csv"
CANDID_HEADER = "filename,SOPInstanceUID,StudyInstanceUID,EncodedPixels,Report"
SIIM_CSV = "train-rle.csv"
SIIM_HEADER = "ImageId, EncodedPixels"  # sic: SIIM-ACR's header has a space after the comma


def relpath(job: ImagePlan, sop: str, study: str, series: str) -> str:
    """Where the job's DICOM file goes, relative to the dataset folder."""
    if job.fmt == "siim":
        return f"dicom-images-train/{study}/{series}/{sop}.dcm"
    return f"images/P{job.patient}_{job.k}.dcm"


def write_csv(out: Path, fmt: str, rows: list[dict]) -> Path:
    """Write the layout's CSV atomically (`files.atomic_write`)."""
    path = out / (CANDID_CSV if fmt == "candid" else SIIM_CSV)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            if fmt == "candid":
                f.write(CANDID_HEADER + "\n")
                writer = csv.writer(f, lineterminator="\n")
                for r in rows:
                    for rle in r["rles"] or ["-1"]:
                        writer.writerow([r["filename"], r["sop"], r["study"], rle, r["report"]])
            else:
                f.write(SIIM_HEADER + "\n")
                for r in rows:
                    for rle in r["rles"] or ["-1"]:
                        f.write(f"{r['sop']}, {rle}\n")

    return atomic_write(path, write)


def _images_of(path: Path, key_column: str, item_of: Callable[[str], dict]) -> dict[str, dict]:
    """{image key: item} in file order, each item collecting its non-empty RLEs."""
    images: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            key = row[key_column]
            item = images.setdefault(key, item_of(key))
            if row["EncodedPixels"].strip() not in ("", "-1"):
                item["rles"].append(row["EncodedPixels"])
    return images


def read_rows(out_dir: Path) -> tuple[str, dict[str, dict]]:
    """Images of a CANDID or SIIM folder: {image key: {"path", "title", "rles"}} in file order."""
    candid, siim = out_dir / CANDID_CSV, out_dir / SIIM_CSV
    if candid.exists():
        images = _images_of(
            candid,
            "filename",
            lambda name: {"path": out_dir / "images" / name, "title": name, "rles": []},
        )
        return "candid", images
    if siim.exists():
        paths = {p.stem: p for p in (out_dir / "dicom-images-train").rglob("*.dcm")}
        images = _images_of(
            siim,
            "ImageId",
            lambda key: {"path": paths.get(key), "title": "…" + key[-14:], "rles": []},
        )
        return "siim", images
    raise SynthError(
        f"{out_dir} has neither {CANDID_CSV} nor {SIIM_CSV}; run `ptxfast synth {out_dir}` first"
    )
