"""Synthetic datasets in the exact CANDID-PTX (or SIIM-ACR) layout, for tests, demos and CI.

`write_dataset(out, n, seed)` draws `n` chest radiograph phantoms (`ptxfast.data.phantom`)
for 1-4 images per patient, writes each as a DICOM file with the variety a real archive has
(CR and DX, MONOCHROME1 and 2, rescale slope/intercept, uncompressed, JPEG 2000 lossless and
RLE lossless) and the CSV the real dataset ships, so everything that runs on the phantoms
runs on the real data unchanged.

Output depends on the arguments alone, not on the number of worker processes: the parent
makes the whole plan (patients, labels, DICOM flavours) from the seed, and every image draws
from its own generator seeded by `(seed, index)`; UIDs come from the same entropy.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptxfast.data.phantom import MAX_VALUE, PhantomMeta, make_patient, make_phantom
from ptxfast.data.rle import decode, encode

__all__ = [
    "CANDID_CSV",
    "CANDID_HEADER",
    "FORMATS",
    "ImagePlan",
    "SIIM_CSV",
    "SIIM_HEADER",
    "SynthError",
    "SynthSummary",
    "make_dicom",
    "make_phantom",
    "plan_dataset",
    "render",
    "write_dataset",
    "write_preview",
]

FORMATS = ("candid", "siim")
CANDID_CSV = "Pneumothorax_reports.csv"
CANDID_HEADER = "filename,SOPInstanceUID,StudyInstanceUID,EncodedPixels,Report"
SIIM_CSV = "train-rle.csv"
SIIM_HEADER = "ImageId, EncodedPixels"  # sic: SIIM-ACR's header has a space after the comma
MANIFEST = "synth.json"
GENERATOR_VERSION = 1  # bump when the same arguments start to produce different files
# What a previous `synth` run leaves in OUT; removed by `overwrite=True`. A stale splits.csv
# would point the training stages at images that no longer exist, so it goes too.
_OUTPUTS = ("images", "dicom-images-train", CANDID_CSV, SIIM_CSV, MANIFEST, "splits.csv")

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


class SynthError(ValueError):
    """Unusable `synth` arguments or output folder; the message names the fix."""


@dataclass(frozen=True)
class SynthSummary:
    """What `write_dataset` wrote."""

    n_images: int
    n_positive: int
    n_rows: int  # CSV rows: one per pneumothorax, one per negative image
    n_patients: int
    seconds: float
    csv: Path
    out: Path
    fmt: str
    size: int
    workers: int
    transfer_syntaxes: dict[str, int] = field(default_factory=dict)  # name -> images
    photometric: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, int] = field(default_factory=dict)


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


# ----------------------------------------------------------------------------- plan


def _quota(rng: np.random.Generator, n: int, shares: dict[str, float], rest: str) -> list[str]:
    """Exactly round(n * share) of each minority value, `rest` elsewhere, shuffled."""
    values: list[str] = []
    for name, share in shares.items():
        values += [name] * int(round(n * share))
    values = values[:n] + [rest] * max(0, n - len(values))
    return [values[i] for i in rng.permutation(n)]


def plan_dataset(
    n: int,
    seed: int,
    size: int = 1024,
    positive_rate: float = 0.17,
    fmt: str = "candid",
    out: Path | str = ".",
) -> list[ImagePlan]:
    """The full, deterministic plan of a dataset: patients, labels and DICOM flavours."""
    if n < 1:
        raise SynthError(f"--n must be at least 1, got {n}")
    if not 0.0 <= positive_rate <= 1.0:
        raise SynthError(f"--positive-rate must be between 0 and 1, got {positive_rate}")
    if fmt not in FORMATS:
        raise SynthError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if size < 32:
        raise SynthError(f"--size must be at least 32 pixels, got {size}")
    rng = np.random.default_rng([seed, 0x5EED])
    key = f"{seed}:{n}:{size}:{positive_rate:g}"

    patients: list[tuple[int, int]] = []  # (patient, k) per image
    p = 0
    while len(patients) < n:
        p += 1
        count = int(rng.choice(_PATIENT_IMAGES[0], p=_PATIENT_IMAGES[1]))
        patients += [(p, k) for k in range(1, count + 1)]
    patients = patients[:n]

    n_pos = int(round(n * positive_rate))
    n_two = int(round(n_pos * _TWO_PTX_SHARE))
    labels = [2] * n_two + [1] * (n_pos - n_two) + [0] * (n - n_pos)
    labels = [labels[i] for i in rng.permutation(n)]
    syntaxes = _quota(rng, n, _SYNTAX_SHARES, "explicit")
    photometric = _quota(rng, n, {"MONOCHROME1": _MONO1_SHARE}, "MONOCHROME2")
    modality = _quota(rng, n, {"DX": _DX_SHARE}, "CR")
    # DX fixes rescale to identity (enumerated values 1 and 0); CR may carry any rescale.
    cr = [i for i in range(n) if modality[i] == "CR"]
    rescale: list[tuple[float, float] | None] = [
        (1.0, 0.0) if m == "DX" else None for m in modality
    ]
    for i, yes in zip(cr, _quota(rng, len(cr), {"yes": _RESCALE_CR_SHARE}, "no"), strict=True):
        if yes == "yes":
            rescale[i] = _RESCALES[int(rng.integers(len(_RESCALES)))]
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


# ----------------------------------------------------------------------------- one image


def _uid(job: ImagePlan, what: str):
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["ptxfast-synth", job.key, what])


def _patient_id(job: ImagePlan) -> str:
    if job.fmt == "siim":  # SIIM-ACR patient ids are UUID strings
        import uuid

        rng = np.random.default_rng([job.seed, job.patient, 0x1D])
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))
    return f"P{job.patient}"


_SITE_WORDS = {
    "apical": "apical",
    "apicolateral": "apicolateral",
    "lateral": "lateral",
    "basal": "basal",
    "large": "",
}


def _report(meta: PhantomMeta, rng: np.random.Generator) -> str:
    """A short free-text report of the findings, in a radiologist's words."""
    parts: list[str] = []
    if meta.view == "AP" and rng.random() < 0.5:
        parts.append("AP portable chest.")
    ptx = meta.pneumothoraces
    if not ptx:
        parts.append(
            str(
                rng.choice(
                    [
                        "No pneumothorax.",
                        "No pneumothorax. Lungs are clear.",
                        "Lungs clear. No pneumothorax or pleural effusion.",
                        "No evidence of pneumothorax.",
                    ]
                )
            )
        )
    elif len(ptx) == 1:
        p = ptx[0]
        if p.site == "large":
            parts.append(f"Large {p.side} pneumothorax with partial collapse of the {p.side} lung.")
        else:
            parts.append(f"{p.size.capitalize()} {p.side} {_SITE_WORDS[p.site]} pneumothorax.")
    elif ptx[0].side != ptx[1].side:
        a, b = sorted(ptx, key=lambda q: q.side != "right")
        words = [
            f"{q.size} {q.side} {_SITE_WORDS[q.site]}".replace("  ", " ").strip() for q in (a, b)
        ]
        parts.append(f"Bilateral pneumothoraces: {words[0]} and {words[1]}.")
    else:
        side = ptx[0].side
        parts.append(
            f"Loculated {side} pneumothorax: {ptx[0].size} {_SITE_WORDS[ptx[0].site]} "
            f"and {ptx[1].size} {_SITE_WORDS[ptx[1].site]} components."
        )
    if meta.chest_tube:
        parts.append(
            str(
                rng.choice(
                    [
                        f"{meta.chest_tube.capitalize()} chest tube in situ.",
                        f"{meta.chest_tube.capitalize()} intercostal drain in place.",
                    ]
                )
            )
        )
    if meta.skin_fold and rng.random() < 0.7:
        parts.append(f"Skin fold projects over the {meta.skin_fold} hemithorax.")
    if meta.ecg_leads and rng.random() < 0.5:
        parts.append("ECG leads overlie the chest.")
    return " ".join(parts)


def _window(values: np.ndarray) -> tuple[float, float]:
    """(center, width) that keep the body's grey levels (percentiles of a subsample)."""
    lo, hi = np.percentile(values[::7, ::7].astype(np.float32), [0.2, 99.9])
    hi = max(hi, lo + 64.0)
    return float((lo + hi) / 2.0), float(hi - lo)


def _ds_str(x: float) -> str:
    """A DS value: short and exact enough (DICOM decimal strings hold 16 characters)."""
    return f"{x:.6g}"


def make_dicom(image: np.ndarray, meta: PhantomMeta, job: ImagePlan, report: str | None = None):
    """Wrap a phantom (12-bit MONOCHROME2 values) as a pydicom Dataset of the job's flavour.

    MONOCHROME1 stores the inverted values and rescale stores `(value - b) / m`, so every
    flavour displays the same picture through the modality LUT, window and photometric rules.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.sr.codedict import codes
    from pydicom.uid import (
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    from ptxfast import __version__

    size = image.shape[0]
    sop, study, series = (
        _uid(job, f"sop:{job.index}"),
        _uid(job, f"study:{job.index}"),
        _uid(job, f"series:{job.index}"),
    )
    pid = _patient_id(job)
    center, width = _window(image)
    stored = image
    if job.photometric == "MONOCHROME1":  # higher values display darker: store the negative
        stored = MAX_VALUE - stored
        center = MAX_VALUE - center
    slope, intercept = job.rescale or (1.0, 0.0)
    if (slope, intercept) != (1.0, 0.0):  # stored = (value - b) / m, so that m * stored + b = value
        stored = np.clip(np.rint((stored.astype(np.float32) - intercept) / slope), 0, MAX_VALUE)
    stored = np.ascontiguousarray(stored, dtype=np.uint16)

    rng = np.random.default_rng([job.seed, job.patient, 0xDA7E])
    birth_year = int(rng.integers(1930, 2000))
    day0 = int(rng.integers(0, 3000))  # the patient's first study; later ones follow
    study_day = np.datetime64("2012-01-01") + np.timedelta64(day0 + 37 * (job.k - 1), "D")
    date = str(study_day).replace("-", "")
    img_rng = np.random.default_rng([job.seed, job.index, 0x7173])
    hh, mm, ss = (
        int(img_rng.integers(0, 24)),
        int(img_rng.integers(0, 60)),
        int(img_rng.integers(0, 60)),
    )
    tm = f"{hh:02d}{mm:02d}{ss:02d}"
    age = int(date[:4]) - birth_year
    dx = job.modality == "DX"

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = (
        DigitalXRayImageStorageForPresentation if dx else ComputedRadiographyImageStorage
    )
    ds.SOPInstanceUID = sop
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = tm
    ds.AccessionNumber = f"SYN{job.index + 1:07d}"
    ds.Modality = job.modality
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "ptxfast"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST 1 VIEW"
    ds.SeriesDescription = f"CHEST {meta.view}"
    ds.ManufacturerModelName = "synthetic chest phantom"
    ds.PatientName = f"PHANTOM^{pid}"
    ds.PatientID = pid
    ds.PatientBirthDate = f"{birth_year}0101"
    ds.PatientSex = meta.patient.sex
    ds.PatientAge = f"{max(age, 1):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = _ds_str(float(rng.choice([110.0, 120.0, 125.0])))
    ds.SoftwareVersions = f"ptxfast {__version__}"
    ds.ViewPosition = meta.view
    spacing = [_ds_str(meta.pixel_spacing_mm)] * 2
    ds.ImagerPixelSpacing = spacing
    if dx:
        ds.DetectorType = "SCINTILLATOR"
        ds.ImageLaterality = "U"  # both sides: a chest
        ds.AnatomicRegionSequence = Sequence([_code(codes.SCT.Chest)])
        ds.AcquisitionContextSequence = Sequence([])
        ds.PositionerType = "NONE"  # a chest stand or a portable cassette, no C-arm
        view = codes.SCT.PosteroAnterior if meta.view == "PA" else codes.SCT.AnteroPosterior
        ds.ViewCodeSequence = Sequence([_code(view)])
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = f"{job.k}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = [
        "L",
        "F",
    ]  # PA / AP radiograph: rows to the patient's left, columns to the feet
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = job.photometric
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = spacing
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if dx:
        ds.PixelIntensityRelationship = "LOG"
        # Sign -1: higher stored values mean less X-ray intensity (bone bright), as MONOCHROME2.
        ds.PixelIntensityRelationshipSign = -1 if job.photometric == "MONOCHROME2" else 1
    ds.WindowCenter = _ds_str(center)
    ds.WindowWidth = _ds_str(width)
    if job.rescale:
        ds.RescaleIntercept = _ds_str(intercept)
        ds.RescaleSlope = _ds_str(slope)
        ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    if dx:
        ds.PresentationLUTShape = "IDENTITY" if job.photometric == "MONOCHROME2" else "INVERSE"
    ds.BurnedInAnnotation = "NO"
    if report:
        ds.ImageComments = report[:10240]

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    if job.syntax in ("explicit", "implicit"):
        ds.file_meta.TransferSyntaxUID = (
            ExplicitVRLittleEndian if job.syntax == "explicit" else ImplicitVRLittleEndian
        )
        ds.PixelData = stored.tobytes()
    else:
        from pydicom.uid import JPEG2000Lossless, RLELossless

        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = stored.tobytes()
        # Keep our deterministic SOP Instance UID (pydicom would make a random new one).
        ds.compress(
            JPEG2000Lossless if job.syntax == "j2k" else RLELossless,
            stored,
            encoding_plugin="pylibjpeg",
            generate_instance_uid=False,
        )
    return ds


def _code(code):
    """A code sequence item from a pydicom `Code`."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
        code.value,
        code.scheme_designator,
        code.meaning,
    )
    return item


def _relpath(job: ImagePlan, sop: str, study: str, series: str) -> str:
    if job.fmt == "siim":
        return f"dicom-images-train/{study}/{series}/{sop}.dcm"
    return f"images/P{job.patient}_{job.k}.dcm"


def render(job: ImagePlan) -> tuple[np.ndarray, list[np.ndarray], PhantomMeta, str]:
    """Draw the phantom of one planned image: (12-bit MONOCHROME2 image, masks, meta, report).

    The patient's habitus comes from `(seed, patient)` and the rest from `(seed, index)`, so
    an image is the same whichever process draws it.
    """
    patient = make_patient(np.random.default_rng([job.seed, job.patient, 0x9A7]))
    rng = np.random.default_rng([job.seed, job.index, 0x1A6E])
    image, masks, meta = make_phantom(rng, job.size, job.n_ptx, patient)
    return image, masks, meta, _report(meta, rng)


def _make_one(job: ImagePlan) -> dict:
    """Draw, encode and write one image; return its CSV rows and flavour (small, picklable)."""
    image, masks, meta, report = render(job)
    ds = make_dicom(image, meta, job, report)
    rel = _relpath(job, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    path = Path(job.out) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return {
        "index": job.index,
        "filename": Path(rel).name,
        "relpath": rel,
        "sop": str(ds.SOPInstanceUID),
        "study": str(ds.StudyInstanceUID),
        "rles": [encode(m) for m in masks],
        "report": report,
        "syntax": job.syntax,
        "photometric": job.photometric,
        "modality": job.modality,
    }


# ----------------------------------------------------------------------------- dataset


def _manifest(n: int, seed: int, size: int, positive_rate: float, fmt: str) -> dict:
    return {
        "generator": "ptxfast synth",
        "version": GENERATOR_VERSION,
        "n": n,
        "seed": seed,
        "size": size,
        "positive_rate": positive_rate,
        "format": fmt,
    }


def _prepare_out(out: Path, manifest: dict, overwrite: bool) -> None:
    """Refuse a non-empty OUT that holds something else; clear our own old outputs."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out} exists and is not a folder; choose another output path")
    out.mkdir(parents=True, exist_ok=True)
    entries = list(out.iterdir())
    if entries:
        previous = None
        try:
            previous = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError):
            pass
        same = isinstance(previous, dict) and {k: previous.get(k) for k in manifest} == manifest
        if not same and not overwrite:
            what = (
                "a different synthetic dataset"
                if previous
                else "files that are not a ptxfast synth dataset"
            )
            raise SynthError(
                f"{out} is not empty and holds {what}; choose an empty folder or pass --overwrite"
            )
        if not same:
            for name in _OUTPUTS:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    (out / MANIFEST).write_text(json.dumps({**manifest, "complete": False}, indent=1) + "\n")


def _worker_init() -> None:
    """Keep freed image buffers in the worker's heap.

    glibc hands every multi-megabyte array back to the kernel when it is freed and faults it
    in again for the next image; at 1024² that page-fault traffic costs about a quarter of
    the time per image. Raising the mmap and trim thresholds keeps the pages (glibc only).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_IN_PROCESS_MAX = 24  # smaller jobs skip the worker start-up (~1 s) and run here


def _run(jobs: list[ImagePlan], workers: int) -> Iterator[dict]:
    if workers <= 1 and len(jobs) <= _IN_PROCESS_MAX:
        yield from map(_make_one, jobs)
        return
    # spawn: a clean interpreter per worker, safe even when the parent has threads (torch).
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(8, len(jobs) // (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        yield from pool.map(_make_one, jobs, chunksize=chunk)


def _write_csv(out: Path, fmt: str, rows: list[dict]) -> Path:
    """Write the layout's CSV atomically (temp file, then rename)."""
    path = out / (CANDID_CSV if fmt == "candid" else SIIM_CSV)
    tmp = path.with_suffix(".csv.tmp")
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
    os.replace(tmp, path)
    return path


def write_dataset(
    out: Path | str,
    n: int,
    seed: int,
    size: int = 1024,
    positive_rate: float = 0.17,
    fmt: str = "candid",
    workers: int | None = None,
    overwrite: bool = False,
) -> SynthSummary:
    """Write `n` phantom DICOMs and the CSV of the `fmt` layout under `out`.

    Same arguments, same bytes, whatever `workers` is (default: min(2, CPUs)). A non-empty
    `out` holding anything but this same dataset is refused unless `overwrite`.
    """
    t0 = time.perf_counter()
    out = Path(out)
    jobs = plan_dataset(n, seed, size, positive_rate, fmt, out)
    manifest = _manifest(n, seed, size, positive_rate, fmt)
    _prepare_out(out, manifest, overwrite)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    workers = max(1, min(int(workers), n))
    rows = sorted(_run(jobs, workers), key=lambda r: r["index"])
    csv_path = _write_csv(out, fmt, rows)
    (out / MANIFEST).write_text(json.dumps({**manifest, "complete": True}, indent=1) + "\n")
    return SynthSummary(
        n_images=n,
        n_positive=sum(1 for r in rows if r["rles"]),
        n_rows=sum(max(1, len(r["rles"])) for r in rows),
        n_patients=len({j.patient for j in jobs}),
        seconds=time.perf_counter() - t0,
        csv=csv_path,
        out=out,
        fmt=fmt,
        size=size,
        workers=workers,
        transfer_syntaxes=dict(Counter(r["syntax"] for r in rows)),
        photometric=dict(Counter(r["photometric"] for r in rows)),
        modalities=dict(Counter(r["modality"] for r in rows)),
    )


# ----------------------------------------------------------------------------- preview


def _read_rows(out_dir: Path) -> tuple[str, dict[str, dict]]:
    """Images of a CANDID or SIIM folder: {image key: {"path", "title", "rles"}} in file order."""
    images: dict[str, dict] = {}
    candid, siim = out_dir / CANDID_CSV, out_dir / SIIM_CSV
    if candid.exists():
        with open(candid, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, skipinitialspace=True):
                item = images.setdefault(
                    row["filename"],
                    {
                        "path": out_dir / "images" / row["filename"],
                        "title": row["filename"],
                        "rles": [],
                    },
                )
                if row["EncodedPixels"].strip() not in ("", "-1"):
                    item["rles"].append(row["EncodedPixels"])
        return "candid", images
    if siim.exists():
        paths = {p.stem: p for p in (out_dir / "dicom-images-train").rglob("*.dcm")}
        with open(siim, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, skipinitialspace=True):
                key = row["ImageId"]
                item = images.setdefault(
                    key, {"path": paths.get(key), "title": "…" + key[-14:], "rles": []}
                )
                if row["EncodedPixels"].strip() not in ("", "-1"):
                    item["rles"].append(row["EncodedPixels"])
        return "siim", images
    raise SynthError(
        f"{out_dir} has neither {CANDID_CSV} nor {SIIM_CSV}; run `ptxfast synth {out_dir}` first"
    )


def write_preview(out_dir: Path | str, png_path: Path | str, n: int = 16, size: int = 256) -> Path:
    """Save a grid of up to `n` images of a dataset with their pneumothorax outlines.

    Half the tiles (when there are enough) show positives, so the outlines are there to see.
    Images are read the way training reads them (`ptxfast.data.dicom.load_image`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ptxfast.data.dicom import load_image

    out_dir, png_path = Path(out_dir), Path(png_path)
    _, images = _read_rows(out_dir)
    items = list(images.values())
    pos = [it for it in items if it["rles"]]
    neg = [it for it in items if not it["rles"]]
    n_pos = min(len(pos), max(n // 2, n - len(neg)))
    chosen = pos[:n_pos] + neg[: n - n_pos]
    chosen.sort(key=lambda it: items.index(it))
    if not chosen:
        raise SynthError(f"{out_dir} lists no images to preview")
    cols = int(np.ceil(np.sqrt(len(chosen))))
    rows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, it in zip(axes.flat, chosen, strict=False):
        img, info = load_image(it["path"], size=size)
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="antialiased")
        shape = (info.rows, info.columns)
        for rle in it["rles"]:
            mask = decode(rle, shape).astype(np.float32)
            f = max(1, shape[0] // size)
            small = (
                mask[: f * (shape[0] // f), : f * (shape[1] // f)]
                .reshape(shape[0] // f, f, -1, f)
                .mean((1, 3))
            )
            ax.contour(
                np.linspace(0, size - 1, small.shape[1]),
                np.linspace(0, size - 1, small.shape[0]),
                small,
                [0.5],
                colors="#ff3030",
                linewidths=0.9,
            )
        label = (
            f"PTX x{len(it['rles'])}" if len(it["rles"]) > 1 else "PTX" if it["rles"] else "no PTX"
        )
        ax.set_title(
            f"{it['title']}  {label}", fontsize=7, color="#b00000" if it["rles"] else "black"
        )
    fig.tight_layout(pad=0.4)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
