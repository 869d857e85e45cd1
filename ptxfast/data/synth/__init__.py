"""Synthetic datasets in the exact CANDID-PTX (or SIIM-ACR) layout, for tests, demos and CI.

`write_dataset(out, n, seed)` draws `n` chest radiograph phantoms (`ptxfast.data.phantom`)
for 1-4 images per patient, writes each as a DICOM file with the variety a real archive has
(CR and DX, MONOCHROME1 and 2, rescale slope/intercept, uncompressed, JPEG 2000 lossless and
RLE lossless) and the CSV the real dataset ships, so everything that runs on the phantoms
runs on the real data unchanged.

Output depends on the arguments alone, not on the number of worker processes: the parent
makes the whole plan (patients, labels, DICOM flavours) from the seed, and every image draws
from its own generator seeded by `(seed, index)`; UIDs come from the same entropy.

The package holds one module per concern: `plan` (the seeded plan of patients, labels and
flavours), `report` (the findings in words), `dicom_file` (the header of one file) and
`pixels` (photometric, rescale, window and the encoding per transfer syntax), `layout`
(CANDID-PTX's and SIIM-ACR's paths and CSVs), `writer` (`write_dataset`, in worker
processes when large) and `preview` (a grid of images with their outlines).
"""

from ptxfast.data.phantom import make_phantom
from ptxfast.data.synth.dicom_file import make_dicom
from ptxfast.data.synth.layout import CANDID_CSV, CANDID_HEADER, SIIM_CSV, SIIM_HEADER
from ptxfast.data.synth.plan import FORMATS, ImagePlan, SynthError, plan_dataset
from ptxfast.data.synth.preview import write_preview
from ptxfast.data.synth.writer import SynthSummary, render, write_dataset

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
