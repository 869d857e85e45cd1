"""`make_dicom`: one phantom as the DICOM file of its plan's flavour (CR or DX).

The header is built group by group in the order a reader meets it: SOP common and equipment,
patient, acquisition (with the DX-only modules), study and series; then the image pixel
module and the pixel data (`ptxfast.data.synth.pixels`). UIDs, dates and times come from the
plan's seed, so the same plan gives the same file whichever process writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    generate_uid,
)

from ptxfast import __version__
from ptxfast.data.phantom import PhantomMeta
from ptxfast.data.synth.pixels import ds_str, encode_pixels, set_image_pixel, stored_pixels
from ptxfast.data.synth.plan import ImagePlan


def _uid(job: ImagePlan, what: str) -> str:
    """A UID derived from the dataset's identity and `what`, the same on every run."""
    return generate_uid(entropy_srcs=["ptxfast-synth", job.key, what])


def _patient_id(job: ImagePlan) -> str:
    """CANDID-PTX style `P<n>`, or a UUID string as SIIM-ACR's are."""
    if job.fmt == "siim":
        import uuid

        rng = np.random.default_rng([job.seed, job.patient, 0x1D])
        return str(uuid.UUID(bytes=rng.bytes(16), version=4))
    return f"P{job.patient}"


@dataclass(frozen=True)
class _Visit:
    """Who and when: the patient's identity and birth year, the study's date, time and kVp."""

    pid: str
    birth_year: int
    date: str  # YYYYMMDD; a patient's later images follow the first by 37 days each
    time: str  # HHMMSS
    kvp: float

    @property
    def age(self) -> int:
        """Age in years at the study."""
        return int(self.date[:4]) - self.birth_year


def _visit(job: ImagePlan) -> _Visit:
    """Draw the patient's birth year and the study's date, time and tube voltage."""
    rng = np.random.default_rng([job.seed, job.patient, 0xDA7E])
    birth_year = int(rng.integers(1930, 2000))
    day0 = int(rng.integers(0, 3000))  # the patient's first study; later ones follow
    study_day = np.datetime64("2012-01-01") + np.timedelta64(day0 + 37 * (job.k - 1), "D")
    img_rng = np.random.default_rng([job.seed, job.index, 0x7173])
    hh, mm, ss = (
        int(img_rng.integers(0, 24)),
        int(img_rng.integers(0, 60)),
        int(img_rng.integers(0, 60)),
    )
    kvp = float(rng.choice([110.0, 120.0, 125.0]))
    date = str(study_day).replace("-", "")
    return _Visit(_patient_id(job), birth_year, date, f"{hh:02d}{mm:02d}{ss:02d}", kvp)


def _code(code: Code) -> Dataset:
    """A code sequence item from a pydicom `Code`."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
        code.value,
        code.scheme_designator,
        code.meaning,
    )
    return item


def _set_sop_and_equipment(ds: Dataset, job: ImagePlan, meta: PhantomMeta, visit: _Visit) -> None:
    """SOP common, general study/series dates and descriptions, and the equipment."""
    dx = job.modality == "DX"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = (
        DigitalXRayImageStorageForPresentation if dx else ComputedRadiographyImageStorage
    )
    ds.SOPInstanceUID = _uid(job, f"sop:{job.index}")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = visit.date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = visit.time
    ds.AccessionNumber = f"SYN{job.index + 1:07d}"
    ds.Modality = job.modality
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "ptxfast"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST 1 VIEW"
    ds.SeriesDescription = f"CHEST {meta.view}"
    ds.ManufacturerModelName = "synthetic chest phantom"


def _set_patient(ds: Dataset, meta: PhantomMeta, visit: _Visit) -> None:
    """The patient module: a phantom name, the ID, birth date, sex and age."""
    ds.PatientName = f"PHANTOM^{visit.pid}"
    ds.PatientID = visit.pid
    ds.PatientBirthDate = f"{visit.birth_year}0101"
    ds.PatientSex = meta.patient.sex
    ds.PatientAge = f"{max(visit.age, 1):03d}Y"


def _set_acquisition(
    ds: Dataset, job: ImagePlan, meta: PhantomMeta, visit: _Visit, spacing: list[str]
) -> None:
    """Body part, technique and view; a DX file adds its detector, anatomy and view codes."""
    ds.BodyPartExamined = "CHEST"
    ds.KVP = ds_str(visit.kvp)
    ds.SoftwareVersions = f"ptxfast {__version__}"
    ds.ViewPosition = meta.view
    ds.ImagerPixelSpacing = spacing
    if job.modality == "DX":
        ds.DetectorType = "SCINTILLATOR"
        ds.ImageLaterality = "U"  # both sides: a chest
        ds.AnatomicRegionSequence = Sequence([_code(codes.SCT.Chest)])
        ds.AcquisitionContextSequence = Sequence([])
        ds.PositionerType = "NONE"  # a chest stand or a portable cassette, no C-arm
        view = codes.SCT.PosteroAnterior if meta.view == "PA" else codes.SCT.AnteroPosterior
        ds.ViewCodeSequence = Sequence([_code(view)])


def _set_study_and_series(ds: Dataset, job: ImagePlan) -> None:
    """Study and series identity; the patient's k-th study holds one series of one image."""
    ds.StudyInstanceUID = _uid(job, f"study:{job.index}")
    ds.SeriesInstanceUID = _uid(job, f"series:{job.index}")
    ds.StudyID = f"{job.k}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    # PA / AP radiograph: rows to the patient's left, columns to the feet.
    ds.PatientOrientation = ["L", "F"]


def make_dicom(
    image: np.ndarray, meta: PhantomMeta, job: ImagePlan, report: str | None = None
) -> Dataset:
    """Wrap a phantom (12-bit MONOCHROME2 values) as a pydicom Dataset of the job's flavour.

    MONOCHROME1 stores the inverted values and rescale stores `(value - b) / m`, so every
    flavour displays the same picture through the modality LUT, window and photometric rules.
    """
    px = stored_pixels(image, job)
    visit = _visit(job)
    spacing = [ds_str(meta.pixel_spacing_mm)] * 2
    ds = Dataset()
    _set_sop_and_equipment(ds, job, meta, visit)
    _set_patient(ds, meta, visit)
    _set_acquisition(ds, job, meta, visit, spacing)
    _set_study_and_series(ds, job)
    set_image_pixel(ds, job, px, spacing)
    ds.BurnedInAnnotation = "NO"
    if report:
        ds.ImageComments = report[:10240]
    encode_pixels(ds, px.values, job.syntax)
    return ds
