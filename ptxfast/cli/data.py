"""synth and split: the phantoms and the split every later stage reads."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from ptxfast.cli import app
from ptxfast.cli.app import DIR, FILE, cli, console, option, warnings_shown


@cli.command("synth")
@click.argument("out", type=DIR)
@option("--n", "n", required=True, min=1, help="Number of images.")
@app.seed_option("Same seed and options, same bytes.", default=None, required=True)
@app.size_option("Image side in pixels.", default=1024)
@option(
    "--positive-rate",
    default=0.17,
    type=click.FloatRange(0.0, 1.0),
    help="Share of images with a pneumothorax (CANDID-PTX: 3,196 of 19,237).",
)
@option(
    "--format",
    "fmt",
    default="candid",
    type=click.Choice(["candid", "siim"]),
    help="candid: Pneumothorax_reports.csv + images/; siim: train-rle.csv + dicom-images-train/.",
)
@option("--preview", type=FILE, help="Also save a PNG grid with mask outlines.")
@app.workers_option("Worker processes [default: min(2, CPUs)].", min=1)
@option("--overwrite", is_flag=True, help="Replace a different dataset already in OUT.")
def synth_command(out, n, seed, size, positive_rate, fmt, preview, workers, overwrite) -> None:
    """Write N synthetic chest radiographs with pneumothorax masks to OUT.

    \b
    The layout is CANDID-PTX's (or SIIM-ACR's with --format siim), so every later stage runs
    on the phantoms as on the real data. DICOMs vary like a real archive: CR and DX,
    MONOCHROME1/2, rescale, uncompressed, JPEG 2000 and RLE lossless.
    """
    from ptxfast.data import synth

    summary = synth.write_dataset(out, n, seed, size, positive_rate, fmt, workers, overwrite)
    if preview:
        synth.write_preview(out, preview)
    Console().print(summary.table(preview))


# ---------------------------------------------------------------- split
@cli.command("split")
@app.data_option(
    "Dataset folder (CANDID-PTX Pneumothorax_reports.csv or SIIM-ACR train-rle.csv).",
    required=True,
)
@app.seed_option("Seed of a newly made split.")
@option("--force", is_flag=True, help="Remake DATA/splits.csv even if it exists.")
def split_command(data: Path, seed: int, force: bool) -> None:
    """Make (or read) DATA/splits.csv, the train/pool/val/test split every stage uses.

    \b
    The paper's proportions: train 80% of the positives + as many negatives, val and test
    10% each at 1 positive : 5 negatives, the other negatives a pool the training rotates
    through; whole patients per split. An existing splits.csv is checked and shown.
    """
    from ptxfast.data import records, splits

    with warnings_shown(records.DatasetWarning):
        result = splits.split_dataset(data, seed=seed, force=force)
    Console().print(result.table())
    console.print(result.message(), highlight=False)
