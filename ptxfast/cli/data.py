"""synth and split: the phantoms and the split every later stage reads."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from ptxfast.cli.app import DIR, EXISTING_DIR, FILE, PtxfastError, cli, console, warnings_shown


@cli.command("synth")
@click.argument("out", type=DIR)
@click.option("--n", "n", required=True, type=click.IntRange(min=1), help="Number of images.")
@click.option("--seed", required=True, type=int, help="Same seed and options, same bytes.")
@click.option(
    "--size",
    default=1024,
    show_default=True,
    type=click.IntRange(min=32),
    help="Image side in pixels.",
)
@click.option(
    "--positive-rate",
    default=0.17,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Share of images with a pneumothorax (CANDID-PTX: 3,196 of 19,237).",
)
@click.option(
    "--format",
    "fmt",
    default="candid",
    show_default=True,
    type=click.Choice(["candid", "siim"]),
    help="candid: Pneumothorax_reports.csv + images/; siim: train-rle.csv + dicom-images-train/.",
)
@click.option("--preview", type=FILE, help="Also save a PNG grid with mask outlines.")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Worker processes [default: min(2, CPUs)]."
)
@click.option("--overwrite", is_flag=True, help="Replace a different dataset already in OUT.")
def synth_command(out, n, seed, size, positive_rate, fmt, preview, workers, overwrite) -> None:
    """Write N synthetic chest radiographs with pneumothorax masks to OUT.

    \b
    The layout is CANDID-PTX's (or SIIM-ACR's with --format siim), so every later stage runs
    on the phantoms as on the real data. DICOMs vary like a real archive: CR and DX,
    MONOCHROME1/2, rescale, uncompressed, JPEG 2000 and RLE lossless.
    """
    from ptxfast.data import synth

    try:
        summary = synth.write_dataset(out, n, seed, size, positive_rate, fmt, workers, overwrite)
        if preview:
            synth.write_preview(out, preview)
    except synth.SynthError as e:
        raise PtxfastError(str(e)) from None
    Console().print(summary.table(preview))


# ---------------------------------------------------------------- split
@cli.command("split")
@click.option(
    "--data",
    "data",
    required=True,
    type=EXISTING_DIR,
    help="Dataset folder (CANDID-PTX Pneumothorax_reports.csv or SIIM-ACR train-rle.csv).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of a newly made split.")
@click.option("--force", is_flag=True, help="Remake DATA/splits.csv even if it exists.")
def split_command(data: Path, seed: int, force: bool) -> None:
    """Make (or read) DATA/splits.csv, the train/pool/val/test split every stage uses.

    \b
    The paper's proportions: train 80% of the positives + as many negatives, val and test
    10% each at 1 positive : 5 negatives, the other negatives a pool the training rotates
    through; whole patients per split. An existing splits.csv is checked and shown.
    """
    from ptxfast.data import records, splits

    with warnings_shown(records.DatasetWarning):
        try:
            result = splits.split_dataset(data, seed=seed, force=force)
        except records.DatasetError as e:
            raise PtxfastError(str(e)) from None
    Console().print(result.table())
    console.print(result.message(), highlight=False)
