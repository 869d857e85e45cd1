"""The DICOM objects scoring writes for one image: a BINARY Segmentation of its mask and a
Structured Report (TID 1500) of its finding, both referencing the source and sharing its
patient and study, both written atomically (`files.atomic_write`).

Their Series and SOP Instance UIDs are derived from the source's and the artifact's sha256
(`derived_uid`): scoring an image again with the same artifact makes the same UIDs, so a
result sent twice to a PACS replaces itself instead of appearing twice.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptxfast.files import atomic_write

__all__ = [
    "SEGMENT_LABEL", "ModelIdentity", "derived_uid", "model_identity", "write_dicom_seg",
    "write_dicom_sr",
]  # fmt: skip

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


@dataclass(frozen=True)
class ModelIdentity:
    """Who made a mask, as written into DICOM SEG: model name, artifact and the rule it used."""

    name: str
    backend: str
    precision: str
    sha256: str
    pixel_threshold: float
    label_threshold: float | None = None  # the image label rule (SR parameters)


def derived_uid(kind: str, source_uid: str, model: ModelIdentity) -> str:
    """The UID of a result of `kind` ("SEG", "SR", "SEG series", "SR series") made by `model`
    from the source object `source_uid`: the same inputs give the same UID (a hash of them
    under pydicom's root), other inputs another."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["ptxfast", kind, str(source_uid), model.sha256, model.name])


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
    return atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


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
        series_instance_uid=derived_uid("SEG series", source.SeriesInstanceUID, model),
        series_number=1,
        sop_instance_uid=derived_uid("SEG", source.SOPInstanceUID, model),
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

    source = _with_type2(source)
    algorithm, context = _sr_observer(model)
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
        groups.append(_sr_segment_group(source, seg, algorithm, finding))
        evidence.append(seg)
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.ChestImaging,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=derived_uid("SR series", source.SeriesInstanceUID, model),
        series_number=1,
        sop_instance_uid=derived_uid("SR", source.SOPInstanceUID, model),
        instance_number=1,
        manufacturer="ptxfast",
        is_complete=True,
        series_description=f"Pneumothorax by ptxfast {model.name}"[:64],
    )
    return _save_dicom(sr, path)


def model_identity(predictor) -> ModelIdentity:
    """Who made the masks of `predictor` (a `runtime.Predictor`), as the DICOM objects record it."""
    side = predictor.sidecar
    return ModelIdentity(
        name=predictor.name,
        backend=predictor.backend,
        precision=predictor.precision,
        sha256=str(side["sha256"]) if side is not None else "",
        pixel_threshold=float(predictor.thresholds.get("pixel") or 0.3),
        label_threshold=float(predictor.thresholds["label"]),
    )


def _sr_observer(model: ModelIdentity):
    """The SR's algorithm (the model, its artifact's sha256 as version) and its observer
    context (one device UID per artifact: the same model is the same observer everywhere)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from ptxfast import __version__

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
    return algorithm, context


def _sr_segment_group(source, seg, algorithm, finding):
    """The ROI group (TID 1411) over segment 1 of the image's SEG, with the same finding."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    # Segment 1 of the SEG as a whole. (TID 1410's reference to one frame carries both a
    # frame and a segment number, which PS3.3 forbids together in an IMAGE item.)
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=1,
        source_images=[hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID)],
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="mask"),
        referenced_segment=segment,
        finding_type=codes.SCT.Pneumothorax,
        algorithm_id=algorithm,
        qualitative_evaluations=[finding],
    )
