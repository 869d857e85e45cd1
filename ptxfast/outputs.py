"""What scoring writes besides preds.csv: PNG masks and overlays, DICOM Segmentations and
DICOM Structured Reports.

Every writer works at the source image's resolution: the model's S×S probability map is
resized (bilinear) to the stored Rows×Columns before thresholding, so outlines follow the
anatomy rather than S×S blocks. Files are written through a temporary name and `os.replace`,
so an interrupted run never leaves a half-written mask behind (a resumed run rewrites it).

Names. Every per-image output name comes from `safe_output_path`: names taken from file
contents (a SOPInstanceUID) or from the input tree (a relative path mirrored under the output
folder) are used only when they are harmless, and the path is checked to lie inside its
folder before anything is written, so a crafted DICOM cannot place a file elsewhere.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEGMENT_LABEL = "Pneumothorax"
# Patient and study attributes a SEG must carry (Type 2: present, possibly empty), which
# highdicom copies from the source; files in the wild sometimes lack them.
_TYPE2_COPIED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)
_OUTLINE_RGB = (255, 40, 40)
# DICOM UI values (PS3.5 9.1): components of digits separated by dots, at most 64 characters.
# Leading zeros (not conformant, seen in the wild) are harmless in a file name and kept.
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_MAX = 64
_NAME_MAX = 255  # bytes in one path component on common Linux file systems
_HASH_CHARS = 32  # of the sha256 hex digest naming an output whose own name is unusable


class UnsafeOutputPath(ValueError):
    """An output path that would resolve outside its folder (e.g. through a symlink there)."""


@dataclass(frozen=True)
class OutputName:
    """Where one per-image output goes, and whether its natural name had to be replaced."""

    path: Path
    replaced: bool  # the UID or input path was unusable; a hash of the source path names it


def is_dicom_uid(text: str) -> bool:
    """True when `text` is a DICOM UI value: digits and dots, at most 64 characters."""
    return len(text) <= _UID_MAX and _UID.fullmatch(text) is not None


def _hashed(rel: str) -> str:
    return hashlib.sha256(os.fsencode(rel)).hexdigest()[:_HASH_CHARS]


def _mirrorable(rel: str, suffix: str) -> bool:
    parts = rel.split("/")
    return (
        bool(rel)
        and not rel.startswith("/")
        and "\0" not in rel
        and all(p not in ("", ".", "..") for p in parts)
        and all(len(os.fsencode(p)) <= _NAME_MAX for p in parts[:-1])
        and len(os.fsencode(parts[-1] + suffix)) <= _NAME_MAX
    )


def safe_output_path(
    folder: str | os.PathLike, rel: str, suffix: str, *, uid: str | None = None
) -> OutputName:
    """The path of an output for the input `rel` (relative, "/"-separated) in `folder`.

    With `uid` (a SOPInstanceUID read from the file), the output is `<folder>/<uid><suffix>`
    when `uid` is a valid DICOM UID; without it, the input's path is mirrored,
    `<folder>/<rel><suffix>`, when its parts are plain names. Anything else (slashes, "..",
    an absolute path, a NUL byte, an over-long name) is replaced by a stable name,
    `<folder>/<sha256 of rel, 32 hex digits><suffix>`, and `replaced` says so. The resolved
    path must lie inside the resolved folder (a symlink in the output tree pointing out is
    refused with UnsafeOutputPath). Nothing is created here: callers make the parent folders
    of the returned path, which lie inside `folder`.
    """
    folder = Path(folder)
    if uid is not None:
        replaced = not is_dicom_uid(uid)
        name = _hashed(rel) if replaced else uid
        path = folder / f"{name}{suffix}"
    else:
        replaced = not _mirrorable(rel, suffix)
        path = folder / f"{_hashed(rel)}{suffix}" if replaced else folder / f"{rel}{suffix}"
    base = folder.resolve()
    if not path.resolve().is_relative_to(base) or path.resolve() == base:
        raise UnsafeOutputPath(
            f"{path} resolves to {path.resolve()}, outside {base}; remove the link that "
            "leads out of the output folder"
        )
    return OutputName(path, replaced)


MASK_SUFFIXES = (".mask.png", ".overlay.png")


def mask_outputs(masks_dir: str | os.PathLike, rel: str) -> tuple[OutputName, OutputName]:
    """Where `score --masks` writes the mask PNG and the overlay PNG of the input `rel` (and
    where the report looks for them)."""
    mask, overlay = (safe_output_path(masks_dir, rel, s) for s in MASK_SUFFIXES)
    return mask, overlay


@dataclass(frozen=True)
class ModelIdentity:
    """Who made a mask, as written into DICOM SEG: model name, artifact and the rule it used."""

    name: str
    backend: str
    precision: str
    sha256: str
    pixel_threshold: float
    label_threshold: float | None = None  # the image label rule (SR parameters)


def source_mask(prob: np.ndarray, rows: int, columns: int, threshold: float) -> np.ndarray:
    """The S×S probability map `prob` resized to rows×columns and thresholded (bool)."""
    from PIL import Image

    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != (rows, columns):
        prob = np.asarray(
            Image.fromarray(prob, mode="F").resize((columns, rows), Image.Resampling.BILINEAR)
        )
    return prob > threshold


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask, thickened for large images."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    edge = mask & ~inner
    # About one outline pixel per 512 of image side, so the outline stays visible when a
    # 3000-pixel radiograph is viewed scaled down.
    for _ in range(max(0, max(mask.shape) // 512 - 1)):
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:-1, :] |= edge[1:, :]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge


def _save_png(image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG", compress_level=3)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_png_masks(
    mask: np.ndarray, image: np.ndarray, mask_path: Path, overlay_path: Path
) -> None:
    """Write the mask (0/255 grayscale PNG) and an overlay (the image with the mask outlined).

    `mask` is bool rows×columns, `image` float32 rows×columns in [0, 1] (air dark).
    """
    from PIL import Image

    mask_path.parent.mkdir(parents=True, exist_ok=True)
    _save_png(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), mask_path)
    _save_png(Image.fromarray(overlay_rgb(image, mask), mode="RGB"), overlay_path)


def overlay_rgb(image: np.ndarray, mask: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """The image (float [0, 1], rows×columns) as uint8 RGB with the mask (bool) outlined, and
    tinted inside with opacity `fill` (0: outline only, as the overlay PNGs are written)."""
    gray = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    if fill > 0:
        tint = np.asarray(_OUTLINE_RGB, dtype=np.float32)
        rgb[mask] = np.rint((1 - fill) * rgb[mask] + fill * tint).astype(np.uint8)
    rgb[_outline(mask)] = _OUTLINE_RGB
    return rgb


def _with_type2(source, copy_anyway: bool = False):
    """`source`, or a copy of it with the Type 2 patient and study attributes a derived
    object copies (`_TYPE2_COPIED`) added empty where missing (unknown, as Type 2 allows)."""
    missing = [k for k in _TYPE2_COPIED if k not in source]
    if not (missing or copy_anyway):
        return source
    source = copy.deepcopy(source)  # Dataset.copy() is shallow
    for keyword in missing:
        setattr(source, keyword, None)
    return source


def _save_dicom(ds, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_dicom_seg(source, mask: np.ndarray, path: Path, model: ModelIdentity) -> Path:
    """Write a BINARY DICOM Segmentation of `mask` over the pydicom dataset `source`.

    One segment, "Pneumothorax" (SCT 36118008), made by an automatic algorithm identified as
    ptxfast and the model (name, backend, precision, artifact sha256 and pixel threshold). The
    segmentation references `source`'s SOPInstanceUID and shares its study and patient.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from ptxfast import __version__

    # A projection radiograph has no slice thickness, and highdicom cannot read back a Pixel
    # Measures item without one; such sources get a SEG without Pixel Measures (optional when
    # there is no Frame of Reference), whose geometry is the source image's it references.
    strip = "SliceThickness" not in source and "PixelSpacing" in source
    source = _with_type2(source, copy_anyway=strip)
    if strip:
        del source.PixelSpacing
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"ptxfast {model.name}",
        family=codes.DCM.ArtificialIntelligence,
        version=f"{__version__} {model.sha256[:12]}",
        source="ptxfast",
        parameters={
            "backend": model.backend,
            "precision": model.precision,
            "pixel_threshold": f"{model.pixel_threshold:g}",
        },
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Pneumothorax,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask[None].astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ptxfast",
        manufacturer_model_name=model.name[:64],
        software_versions=__version__,
        device_serial_number=model.sha256[:16],
        content_label="PTXFAST",
        content_description=f"Pneumothorax by ptxfast {model.name}"[:64],
        # A positive whose mask is empty still gets its (empty) frame, so every SEG has one.
        omit_empty_frames=False,
    )
    # Type 2C in the General Image module for images without Image Orientation (Patient),
    # which highdicom does not carry over from a projection radiograph.
    if "ImageOrientationSlide" not in seg and "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation", "")
    return _save_dicom(seg, path)


def write_dicom_sr(
    source, path: Path, model: ModelIdentity, probability: float, present: bool, seg=None
) -> Path:
    """Write a Comprehensive 3D SR (TID 1500 Measurement Report) of one scored image.

    It references `source` (a pydicom dataset, pixels not needed) by its Study, Series and
    SOP Instance UIDs and shares its patient and study. One image-level group (TID 1501),
    finding type Pneumothorax (SCT 36118008), holds the finding, Pneumothorax: Present
    (SCT 52101004) or Absent (SCT 272519000) at the artifact's label threshold, and the
    probability (DCM 122157, unit UCUM "1"); the algorithm is identified by the model's name
    with the artifact's sha256 as its version, and its backend, precision and label threshold
    as parameters. With `seg` (the dataset, or header, of the image's DICOM SEG), an ROI group
    (TID 1411, the template that references a whole segment) points at its segment 1 with the
    same finding, and the SEG is evidence.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from ptxfast import __version__

    source = _with_type2(source)
    parameters = [f"ptxfast {__version__}", f"{model.backend} {model.precision}"]
    if model.label_threshold is not None:
        parameters.append(f"label threshold {model.label_threshold:g}")
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"ptxfast {model.name}",
        version=model.sha256 or "unknown",
        parameters=parameters,
        family=codes.DCM.ArtificialIntelligence,
        manufacturer="ptxfast",
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        # One device UID per artifact: the same model is the same observer in every report.
        uid=generate_uid(entropy_srcs=["ptxfast", model.name, model.sha256]),
        name="ptxfast",
        manufacturer_name="ptxfast",
        model_name=model.name[:64],
        serial_number=model.sha256[:16] or None,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    finding = hd.sr.QualitativeEvaluation(
        name=codes.SCT.Pneumothorax, value=codes.SCT.Present if present else codes.SCT.Absent
    )
    measurement = hd.sr.Measurement(
        name=codes.DCM.Probability,
        value=float(probability),
        unit=codes.UCUM.NoUnits,
        algorithm_id=algorithm,
    )
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="image"),
            finding_type=codes.SCT.Pneumothorax,
            algorithm_id=algorithm,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            measurements=[measurement],
            qualitative_evaluations=[finding],
        )
    ]
    evidence = [source]
    if seg is not None:
        # Segment 1 of the SEG as a whole. (TID 1410's reference to one frame carries both a
        # frame and a segment number, which PS3.3 forbids together in an IMAGE item.)
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=1,
            source_images=[
                hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID)
            ],
        )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="mask"),
                referenced_segment=segment,
                finding_type=codes.SCT.Pneumothorax,
                algorithm_id=algorithm,
                qualitative_evaluations=[finding],
            )
        )
        evidence.append(seg)
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.ChestImaging,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ptxfast",
        is_complete=True,
        series_description=f"Pneumothorax by ptxfast {model.name}"[:64],
    )
    return _save_dicom(sr, path)
