"""A phantom's pixels as a DICOM file stores them: photometric and rescale applied, the image
pixel module, and the pixel data encoded in each transfer syntax synth writes.

MONOCHROME1 stores the inverted values and rescale stores `(value - b) / m`, so every flavour
displays the same picture through the modality LUT, window and photometric rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from ptxfast.data.phantom import MAX_VALUE
from ptxfast.data.synth.plan import ImagePlan

# Transfer syntaxes by the plan's name: the native ones store the bytes as they are, the
# compressed ones are encoded by pylibjpeg.
NATIVE_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian}
COMPRESSED_SYNTAXES = {"j2k": JPEG2000Lossless, "rle": RLELossless}


def ds_str(x: float) -> str:
    """A DS value: short and exact enough (DICOM decimal strings hold 16 characters)."""
    return f"{x:.6g}"


def display_window(values: np.ndarray) -> tuple[float, float]:
    """(center, width) that keep the body's grey levels (percentiles of a subsample)."""
    lo, hi = np.percentile(values[::7, ::7].astype(np.float32), [0.2, 99.9])
    hi = max(hi, lo + 64.0)
    return float((lo + hi) / 2.0), float(hi - lo)


@dataclass(frozen=True, eq=False)
class StoredPixels:
    """The values a file stores for a phantom, and the window and rescale that undo them."""

    values: np.ndarray  # uint16, C-contiguous
    center: float  # window centre in stored units (inverted for MONOCHROME1)
    width: float
    slope: float
    intercept: float


def stored_pixels(image: np.ndarray, job: ImagePlan) -> StoredPixels:
    """Apply the job's photometric and rescale to a 12-bit MONOCHROME2 phantom."""
    center, width = display_window(image)
    stored = image
    if job.photometric == "MONOCHROME1":  # higher values display darker: store the negative
        stored = MAX_VALUE - stored
        center = MAX_VALUE - center
    slope, intercept = job.rescale or (1.0, 0.0)
    if (slope, intercept) != (1.0, 0.0):  # stored = (value - b) / m, so that m * stored + b = value
        stored = np.clip(np.rint((stored.astype(np.float32) - intercept) / slope), 0, MAX_VALUE)
    stored = np.ascontiguousarray(stored, dtype=np.uint16)
    return StoredPixels(stored, center, width, slope, intercept)


def set_image_pixel(ds: Dataset, job: ImagePlan, px: StoredPixels, spacing: list[str]) -> None:
    """The image pixel, VOI LUT and modality LUT attributes of the job's flavour."""
    dx = job.modality == "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = job.photometric
    ds.Rows = ds.Columns = px.values.shape[0]
    ds.PixelSpacing = spacing
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if dx:
        ds.PixelIntensityRelationship = "LOG"
        # Sign -1: higher stored values mean less X-ray intensity (bone bright), as MONOCHROME2.
        ds.PixelIntensityRelationshipSign = -1 if job.photometric == "MONOCHROME2" else 1
    ds.WindowCenter = ds_str(px.center)
    ds.WindowWidth = ds_str(px.width)
    if job.rescale:
        ds.RescaleIntercept = ds_str(px.intercept)
        ds.RescaleSlope = ds_str(px.slope)
        ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    if dx:
        ds.PresentationLUTShape = "IDENTITY" if job.photometric == "MONOCHROME2" else "INVERSE"


def encode_pixels(ds: Dataset, stored: np.ndarray, syntax: str) -> None:
    """Give `ds` its file meta and its pixel data in the transfer syntax named `syntax`."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if syntax in NATIVE_SYNTAXES:
        ds.file_meta.TransferSyntaxUID = NATIVE_SYNTAXES[syntax]
        ds.PixelData = stored.tobytes()
        return
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = stored.tobytes()
    # Keep our deterministic SOP Instance UID (pydicom would make a random new one).
    ds.compress(
        COMPRESSED_SYNTAXES[syntax],
        stored,
        encoding_plugin="pylibjpeg",
        generate_instance_uid=False,
    )
