"""The `ptxfast` command line: thin click commands over the library functions.

Each command parses its options, calls one library function and renders the result.
Heavy imports (torch, pydicom) happen inside the commands so `ptxfast --help` is instant.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


class PtxfastError(click.ClickException):
    """A user-facing error: one line that says what is wrong and what to do."""

    def show(self, file=None) -> None:  # noqa: D102 - rich rendering of click's error
        console.print(f"[bold red]error:[/] {escape(self.format_message())}", highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ptxfast")
def cli() -> None:
    """ptxfast: pneumothorax detection on chest X-rays, trained, fused, compiled and benchmarked.

    \b
    Start with synthetic phantoms in the CANDID-PTX layout:
      ptxfast synth phantoms/ --n 400 --seed 0
      ptxfast train --arch all --recipe quick --data phantoms/
    """


def main(args: list[str] | None = None) -> None:
    """Entry point of the `ptxfast` script; `args` makes it callable from tests."""
    cli.main(args=args, prog_name="ptxfast", standalone_mode=True)


@contextlib.contextmanager
def _warnings_shown(
    *categories: type[Warning], live: bool = False, speak: bool = True, models_log: bool = False
) -> Iterator[None]:
    """Collect the warnings of `categories` raised in the block and print each as one line
    once the block has finished (not when it raised: the error is what the user needs).

    `live`: print each as it happens instead (a run that lasts, such as training); `speak=False`
    prints none (torchrun ranks other than 0); `models_log`: the model builder's log warnings
    (no ImageNet weights on disk) are printed the same way instead of going to the log.
    """
    import logging

    def show(message, *args, **kwargs) -> None:
        if speak:
            console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)

    class _Warn(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            show(record.getMessage())

    log, handler = logging.getLogger("ptxfast.models"), _Warn(logging.WARNING)
    if models_log:
        log.addHandler(handler)
        log.propagate = False
    try:
        with warnings.catch_warnings(record=not live) as caught:
            if live:
                warnings.showwarning = show
            for category in categories:
                warnings.simplefilter("always", category)
            yield
    finally:
        if models_log:
            log.removeHandler(handler)
            log.propagate = True
    for w in caught or ():
        show(w.message)


# ---------------------------------------------------------------- synth
@cli.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
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
@click.option(
    "--preview",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also save a PNG grid with mask outlines.",
)
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
    type=click.Path(exists=True, file_okay=False, path_type=Path),
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

    with _warnings_shown(records.DatasetWarning):
        try:
            result = splits.split_dataset(data, seed=seed, force=force)
        except records.DatasetError as e:
            raise PtxfastError(str(e)) from None
    Console().print(result.table())
    console.print(result.message(), highlight=False)


# ---------------------------------------------------------------- train
@cli.command("train")
@click.option(
    "--arch",
    required=True,
    help="Model name (rn34, eb3, rn34un, eb3un, rn34un+rn34, rn34un+eb3, eb3un+rn34, eb3un+eb3) "
    "or all (segmenters before their cascades).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Dataset folder (CANDID-PTX or SIIM-ACR layout).",
)
@click.option(
    "--runs",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Checkpoints and logs go to RUNS/<arch>/.",
)
@click.option(
    "--recipe",
    default="paper",
    show_default=True,
    help="paper, quick, or a path to a recipe .toml (train/paper.toml shows the format).",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Override the recipe's epochs.")
@click.option("--size", type=click.IntRange(min=32), help="Input side in pixels (multiple of 32).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override the recipe's batch size.")
@click.option("--lr", type=float, help="Override the recipe's learning rate.")
@click.option("--device", help="cpu, cuda, cuda:1 (default: the recipe's, auto).")
@click.option("--workers", type=click.IntRange(min=0), help="DataLoader worker processes.")
@click.option("--seed", type=int, help="Seed for weights init, data order and a new split.")
@click.option(
    "--weights",
    help="Initial weights: a state-dict file, 'imagenet' (from disk caches) or 'none'.",
)
@click.option("--resume", is_flag=True, help="Continue from RUNS/<arch>/last.pt.")
def train_command(arch, recipe, resume, **overrides) -> None:
    """Train one of the eight models (or all) with a recipe; writes RUNS/<arch>/best.pt.

    \b
    Cascades need their segmenter's RUNS/<seg>/best.pt. Under torchrun
    (torchrun --nproc_per_node N -m ptxfast train ...) training is data-parallel.
    """
    import os

    from ptxfast import checkpoint, environment, training
    from ptxfast.data import records
    from ptxfast.training.render import results_table

    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 speaks
    # `overrides`: the recipe settings given as options (data, runs, epochs, size, batch_size,
    # lr, device, workers, seed, weights); None keeps the recipe's.
    errors = (training.TrainError, checkpoint.CheckpointError, environment.DeviceError)
    try:
        with _warnings_shown(records.DatasetWarning, live=True, speak=rank0, models_log=True):
            results = training.train_models(
                arch, recipe, resume=resume, console=console, **overrides
            )
    except (*errors, records.DatasetError) as e:
        raise PtxfastError(str(e)) from None
    if rank0:
        Console().print(results_table(results, recipe))


# ---------------------------------------------------------------- evaluate
@cli.command("evaluate")
@click.option(
    "--runs",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of trained models (RUNS/<model>/best.pt).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Dataset folder [default: the one each checkpoint was trained on].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where metrics.json, metrics.csv and the figures go [default: RUNS/eval].",
)
@click.option(
    "--models",
    help="Comma-separated model names [default: every trained one of the eight].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--workers",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="DataLoader worker processes for decoding.",
)
@click.option(
    "--tune-cutoffs",
    is_flag=True,
    help="Also tune the segmenters' pixel threshold and min area on the validation split (by F1).",
)
@click.option(
    "--overlays",
    default=8,
    show_default=True,
    type=click.IntRange(min=0),
    help="Images per mask-overlay figure (segmenters and cascades); 0 for none.",
)
@click.option(
    "--target-recall",
    "target_recalls",
    multiple=True,
    metavar="R",
    help="Operating point: the highest threshold whose validation recall is at least R, "
    "applied to test (repeatable; 'none' for no operating points) [default: 0.9 and 0.95].",
)
@click.option(
    "--bootstrap",
    "n_boot",
    default=2000,
    show_default=True,
    type=click.IntRange(min=100),
    help="Stratified bootstrap resamples behind each 95% CI.",
)
def evaluate_command(
    runs,
    data,
    out,
    models,
    device,
    batch_size,
    workers,
    tune_cutoffs,
    overlays,
    target_recalls,
    n_boot,
) -> None:
    """Score the trained models on the test split the way the paper reports them.

    \b
    Each model at the size it was trained at: F1, recall, precision, specificity, ROC-AUC,
    confusion matrix, and Dice for segmenters and cascades. Labels by the paper's cut-offs:
    p > 0.5 for classifiers and cascades; more than 375 pixels (at 512², scaled by area)
    above 0.3 for segmenters. Besides them, operating points for target recalls chosen on
    the validation split, sensitivity, specificity, PPV, NPV, F1 and AUC with 95% bootstrap
    CIs, and temperature scaling fitted on validation (ECE before and after). Writes
    metrics.json, metrics.csv, confusion.png, roc.png, recall_f1.png, reliability.png and
    overlays_<model>.png, and RUNS/<model>/evaluation.json (thresholds and temperature, read
    by `ptxfast export --operating-point`).

    \b
    Examples:
      ptxfast evaluate --runs runs --target-recall 0.9
      ptxfast evaluate --target-recall 0.9 --target-recall 0.95 --tune-cutoffs
    """
    from ptxfast import checkpoint, environment, evaluation
    from ptxfast.data import records
    from ptxfast.evaluation import render

    errors = (evaluation.EvalError, checkpoint.CheckpointError, environment.DeviceError)
    try:
        with _warnings_shown(records.DatasetWarning):
            cfg = evaluation.EvalConfig(
                runs=runs,
                data=data,
                out=out,
                models=models,
                device=device,
                batch_size=batch_size,
                tune=tune_cutoffs,
                overlays=overlays,
                workers=workers,
                target_recalls=_target_recalls(target_recalls),
                n_boot=n_boot,
            )
            report = evaluation.run_evaluation(
                cfg, progress=lambda line: console.print(line, highlight=False)
            )
    except (*errors, records.DatasetError) as e:
        raise PtxfastError(str(e)) from None
    Console().print(render.metrics_table(report))
    if any(r.operating_points for r in report.results):
        Console().print(render.operating_point_table(report))
    console.print(render.files_line(report), highlight=False)


def _target_recalls(values: tuple[str, ...]) -> tuple[float, ...]:
    """--target-recall values: numbers in (0, 1], or 'none'; nothing given means the defaults."""
    from ptxfast.evaluation import DEFAULT_TARGET_RECALLS

    if not values:
        return DEFAULT_TARGET_RECALLS
    if [v.lower() for v in values] == ["none"]:
        return ()
    out = []
    for v in values:
        try:
            r = float(v)
        except ValueError:
            r = -1.0
        if not 0 < r <= 1:
            raise PtxfastError(f"--target-recall {v}: give a recall in (0, 1], e.g. 0.9, or none")
        out.append(r)
    return tuple(out)


# ---------------------------------------------------------------- export
# The parity-gate tolerances export takes (ExportConfig fields of the same names).
_TOLERANCE_OPTIONS = (
    ("--min-agreement", click.FloatRange(0, 1),
     "Least share of labels equal to eager fp32's [default: 0.995; bf16 0.99]."),
    ("--max-df1", click.FloatRange(min=0),
     "Largest |ΔF1| vs eager fp32 [default: 0.01; bf16 0.02]."),
    ("--max-drecall", click.FloatRange(min=0),
     "Largest |Δrecall| vs eager fp32 [default: reported, not gated]."),
    ("--max-dauc", click.FloatRange(min=0),
     "Largest |ΔROC-AUC| vs eager fp32 [default: 0.01; bf16 0.02]."),
    ("--max-ddice", click.FloatRange(min=0),
     "Largest |Δ mean Dice| of the masks vs eager fp32 [default: 0.01; bf16 0.02]."),
    ("--max-dprob", click.FloatRange(min=0),
     "Largest |Δprobability| [default: fp32 1e-4, fp16 0.02, bf16 0.15]."),
)  # fmt: skip


def _tolerance_options(command):
    """Add the `_TOLERANCE_OPTIONS` to a click command, in the table's order."""
    for flag, kind, text in reversed(_TOLERANCE_OPTIONS):
        command = click.option(flag, type=kind, help=text)(command)
    return command


@cli.command("export")
@click.option(
    "--cascade",
    "cascade",
    help="Cascade to export: rn34un+rn34, rn34un+eb3, eb3un+rn34, eb3un+eb3.",
)
@click.option(
    "--model", "model", help="Classifier or segmenter to export: rn34, eb3, rn34un, eb3un."
)
@click.option(
    "--runs",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Checkpoints: RUNS/<name>/best.pt.",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Export this checkpoint instead of RUNS/<name>/best.pt.",
)
@click.option(
    "--out",
    default="exports",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Artifacts go to OUT/<name>.<backend>-<precision>.{ts,ep,onnx,json}.",
)
@click.option(
    "--backend",
    type=click.Choice(["tensorrt", "torchscript", "onnxruntime", "onnx", "openvino"]),
    help="[default: on CUDA tensorrt where it can run, else torchscript; on a CPU the fastest "
    "candidate that passes the gate] onnx = onnxruntime (the portable .onnx artifact).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp16", "bf16", "fp32"]),
    help="[default: fp16 on CUDA, fp32 on CPU]; bf16 suits CPUs with bf16 units (avx512_bf16, AMX).",
)
@click.option(
    "--batch", "batch", help="Batch range MIN:OPT:MAX the artifact serves [default: 1:8:32]."
)
@click.option(
    "--size",
    type=click.IntRange(min=32),
    help="Input side in pixels [default: the checkpoint's training size].",
)
@click.option("--device", help="cpu, cuda, cuda:1 [default: cuda when present].")
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Labelled dataset whose validation split gates parity [default: the recipe's, else synthetic phantoms].",
)
@click.option(
    "--profile",
    help="Export profile: a name in export/ (cpu-fp32, cpu-bf16, gpu-fp16, ...) or a .toml file.",
)
@click.option(
    "--return-mask/--no-return-mask",
    default=None,
    help="Also return the N×1×S×S mask [default: no].",
)
@click.option(
    "--parity-n",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Synthetic phantoms for the gate when there is no dataset.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the synthetic phantoms."
)
@_tolerance_options
@click.option(
    "--operating-point",
    metavar="recall=R|threshold=T|calibrated",
    help="How the artifact labels: the threshold `ptxfast evaluate` chose on validation for "
    "recall R, a given threshold T, or calibrated probabilities above 0.5 [default: the "
    "model's rule, p > 0.5; segmenters 0.3].",
)
@click.option(
    "--tta",
    type=click.Choice(["none", "hflip"]),
    default="none",
    show_default=True,
    help="hflip: average each image with its left-right mirror inside the graph (2x compute).",
)
def export_command(
    cascade, model, runs, checkpoint, out, backend, precision, batch, size, device, data, profile,
    return_mask, parity_n, seed, min_agreement, max_df1, max_drecall, max_dprob, max_dauc,
    max_ddice, operating_point, tta,
) -> None:  # fmt: skip
    """Fuse a trained model into one graph, compile it, gate it on parity, write an artifact.

    \b
    The artifact (TorchScript .ts, TensorRT as .ts / exported program .ep, ONNX .onnx for
    onnxruntime and openvino) comes with a JSON sidecar: input size and dtype, thresholds,
    versions, sha256 of the artifact and of its checkpoints, and the parity figures against
    eager fp32. An export outside the tolerances fails and writes nothing. On a CPU without
    --backend, every CPU backend that runs here is built, gated and timed, and the fastest
    that passes is written (the table is printed and kept in the sidecar).
      ptxfast export --cascade eb3un+eb3
      ptxfast export --cascade eb3un+eb3 --backend onnx
      ptxfast export --cascade eb3un+eb3 --backend openvino --precision bf16
      ptxfast export --cascade eb3un+eb3 --profile cpu-bf16
      ptxfast export --model eb3un --backend torchscript --precision fp32
      ptxfast export --cascade eb3un+eb3 --operating-point recall=0.95 --tta hflip
    """
    from ptxfast.artifact import ArtifactError
    from ptxfast.export import ExportConfig, ExportError, ParityError, export_model, parse_batch
    from ptxfast.export.render import figures_table, result_tables
    from ptxfast.runtime import PredictorError

    if bool(cascade) == bool(model):
        raise PtxfastError(
            "name one model: --cascade NAME (a cascade) or --model NAME (the other four)"
        )
    name = cascade or model
    try:
        cfg = ExportConfig(
            name=name, option="cascade" if cascade else "model", runs=runs, out=out,
            checkpoint=checkpoint, backend=backend, precision=precision,
            batch=parse_batch(batch) if batch else None, size=size, device=device, data=data,
            profile=profile, return_mask=return_mask, parity_n=parity_n, seed=seed,
            min_agreement=min_agreement, max_df1=max_df1, max_drecall=max_drecall,
            max_dprob=max_dprob, max_dauc=max_dauc, max_ddice=max_ddice,
            operating_point=operating_point, tta=tta,
        )  # fmt: skip
        result = export_model(
            cfg, say=lambda line: console.print(line, highlight=False, markup=False)
        )
    except ParityError as e:
        console.print(figures_table(e.figures))
        raise PtxfastError(str(e)) from None
    except (ExportError, ArtifactError, PredictorError) as e:
        raise PtxfastError(str(e)) from None
    except RuntimeError as e:  # a TensorRT build failure: one line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PtxfastError(f"export of {name} failed: {first}") from None
    for table in result_tables(result):
        Console().print(table)


# ---------------------------------------------------------------- score
@cli.command("score")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Predictions CSV: path,sop_instance_uid,probability,label,mask_area,error.",
)
@click.option(
    "--model",
    "model",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Artifact (model file or its .json sidecar) [default: the newest under --exports].",
)
@click.option(
    "--exports",
    default="exports",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the default artifact is looked for.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cuda, cuda:N or cpu.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="Decoding processes [default: 1 on CPU, all cores but one (max 16) with a GPU; "
    "0 decodes in-process].",
)
@click.option(
    "--lanes",
    type=click.IntRange(min=1),
    help="CPU: batches the model runs at once, side by side [default: one per core].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU: torch threads per lane [default: 1, or the cores divided by --lanes]; the "
    "decoding workers share the cores.",
)
@click.option("--resume", is_flag=True, help="Continue OUT: skip files it already has a row for.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.")
@click.option(
    "--shard",
    default="1/1",
    show_default=True,
    help="K/N: score the K-th of every N files (i % N == K-1), one CSV per shard.",
)
@click.option(
    "--masks",
    "masks_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="PNG mask and overlay per positive (needs an artifact exported with --return-mask).",
)
@click.option(
    "--dicom-seg",
    "seg_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="DICOM Segmentation per positive DICOM, named <SOPInstanceUID>.dcm (a hash of its "
    "path when the UID is not a valid DICOM UID).",
)
@click.option(
    "--dicom-sr",
    "sr_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="DICOM SR per scored DICOM (finding, probability, model; the SEG of a positive with "
    "--dicom-seg), named like the SEGs.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the summary as JSON.",
)
@click.option(
    "--model-only-iters",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Batches timed for the model-only throughput (0: skip).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this machine; ray: a Ray cluster (decoders on every CPU, one model actor per "
    "GPU or CPU lane), same CSV and --resume (needs pip install 'ptxfast[ray]').",
)
@click.option(
    "--address",
    help="--engine ray: the cluster (auto: the one `ray start` runs here; ray://host:10001) "
    "[default: Ray's, or a new cluster of this machine].",
)
@click.option(
    "--decoders",
    type=click.IntRange(min=1),
    help="--engine ray: decoder actors [default: the CPUs the model actors leave, or "
    "CPUs / 8 without GPUs].",
)
@click.option(
    "--actors",
    type=click.IntRange(min=1),
    help="--engine ray: model actors [default: one per GPU, or one per CPU without GPUs].",
)
@click.option(
    "--eligibility",
    type=click.Choice(["strict", "default", "off"]),
    default="default",
    show_default=True,
    help="Label chest radiographs only, read from each DICOM header before decoding: default "
    "refuses other modalities (CT, MR, US, SR...), lateral views and other body parts; strict "
    "also files whose header says nothing (PNG/JPEG); off scores every decodable image.",
)
def score_command(
    folder, out, model, exports, device, batch_size, workers, lanes, threads, resume, overwrite,
    shard, masks_dir, seg_dir, sr_dir, json_path, model_only_iters, engine, address, decoders,
    actors, eligibility,
) -> None:  # fmt: skip
    """Score every DICOM, PNG and JPEG under FOLDER into one CSV row per file.

    \b
    Files are found recursively and sorted; errors (corrupt, truncated, not an image) are rows
    with an empty probability, never a stop. Rows are fsync'd batch by batch: after an
    interruption run the same command with --resume. N machines: --shard 1/N ... N/N, then
      head -n 1 preds-1.csv > preds.csv && tail -q -n +2 preds-*.csv >> preds.csv
    or one run over a Ray cluster: --engine ray (see README, "Scoring on a cluster").
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ptxfast import score
    from ptxfast.score import ledger

    try:
        parts = score.parse_shard(shard)
        ray_options = None
        if engine == "ray":
            from ptxfast.score.engine_ray import RayOptions

            ray_options = RayOptions(address=address, decoders=decoders, actors=actors)
        elif address or decoders or actors:
            raise PtxfastError("--address, --decoders and --actors go with --engine ray")
        config = score.ScoreConfig(
            root=folder, out=out, model=model, device=device, batch_size=batch_size,
            workers=workers, resume=resume, shard=parts, masks_dir=masks_dir,
            seg_dir=seg_dir, sr_dir=sr_dir, overwrite=overwrite, summary_json=json_path,
            exports_dir=exports, lanes=lanes, threads=threads,
            model_only_iters=model_only_iters, engine=engine, ray=ray_options,
            eligibility=eligibility,
        )  # fmt: skip
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("scoring", total=None)
            config.progress = lambda done, total: bar.update(task, completed=done, total=total)
            s = score.score_folder(config)
    except (score.ScoreError, ledger.LedgerError) as e:
        # ledger: another run holds --out, or a file could not be written (disk full...).
        raise PtxfastError(str(e)) from None
    score.print_summary(s, config, console)


# ---------------------------------------------------------------- report
@cli.command("report")
@click.argument("preds", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write [default: report.html beside PREDS].",
)
@click.option(
    "--masks",
    "masks_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The run's --masks folder: overlays of the predicted masks on the cards.",
)
@click.option(
    "--json",
    "summary_json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The run's --json summary: model, artifact sha256, threshold, images/s, scored folder.",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="The scored folder, for thumbnails [default: the one --json names].",
)
@click.option(
    "--top",
    default=48,
    show_default=True,
    type=click.IntRange(min=0),
    help="Positives shown as cards with thumbnails; the rest are listed as text.",
)
@click.option(
    "--page-size", default=200, show_default=True, type=click.IntRange(min=1), help="Rows per page."
)
def report_command(preds, out, masks_dir, summary_json, root, top, page_size) -> None:
    """Write a scoring run's worklist as one self-contained HTML file.

    \b
    Summary, a histogram of the probabilities, the positives by probability (the most probable
    with a thumbnail and the mask overlay), the failures with their errors, and the negatives.
    Images are embedded; the page fetches nothing from the network.
      ptxfast score dicoms/ --out preds.csv --masks masks/ --json score.json
      ptxfast report preds.csv --masks masks/ --json score.json --out report.html
    """
    from ptxfast import report

    try:
        r = report.build_report(
            preds, out or preds.with_name("report.html"), masks_dir=masks_dir,
            summary_json=summary_json, root=root, top=top, page_size=page_size,
        )  # fmt: skip
    except report.ReportError as e:
        raise PtxfastError(str(e)) from None
    for line in r.lines():
        console.print(line, highlight=False)
    click.echo(str(r.path))


# ---------------------------------------------------------------- bench
def _int_list(option: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise PtxfastError(
            f"{option} {text!r}: give positive integers separated by commas, e.g. 1,8"
        )
    return values


@cli.command("bench")
@click.option(
    "--model",
    "model",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Exported artifact (model file or .json sidecar); on-the-fly backends use its checkpoint.",
)
@click.option(
    "--cascade",
    "name",
    help="Model to build on the fly: a cascade (or any of the eight) from RUNS/<name>/best.pt, "
    "else at random init.",
)
@click.option(
    "--runs", type=click.Path(file_okay=False, path_type=Path), help="Checkpoints [default: runs]."
)
@click.option(
    "--exports",
    default="exports",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where a run without --model/--cascade looks for the newest artifact.",
)
@click.option(
    "--backends",
    help="Comma list of eager, eager-fp16, eager-bf16, torchscript, torchscript-fp16, "
    "torchscript-bf16, inductor, inductor-fp16, inductor-bf16, tensorrt, tensorrt-fp32, "
    "onnxruntime, openvino, openvino-bf16, artifact [default: every one for this device].",
)
@click.option("--batch-sizes", help="Comma list [default: 1,8,32,64 on a GPU, 1,8 on a CPU].")
@click.option(
    "--size",
    type=click.IntRange(min=32),
    help="Input side [default: the artifact's or checkpoint's; else 512 GPU, 128 CPU].",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Labelled dataset: its test split is the parity set and gives the files to decode "
    "[default: the model's training data, else synthetic phantoms].",
)
@click.option("--iters", type=click.IntRange(min=1), help="Timed calls per repeat [GPU 20, CPU 4].")
@click.option("--warmup", type=click.IntRange(min=1), help="Untimed calls first [GPU 5, CPU 2].")
@click.option("--repeats", type=click.IntRange(min=1), help="Repeats of --iters [GPU 3, CPU 2].")
@click.option(
    "--parity-n", type=click.IntRange(min=0), help="Parity images, 0 for none [GPU 64, CPU 32]."
)
@click.option(
    "--stage-files",
    type=click.IntRange(min=0),
    help="Files decoded for the stage breakdown, 0 for none [GPU 24, CPU 8].",
)
@click.option(
    "--inductor-mode",
    help="torch.compile mode for inductor (e.g. max-autotune) [default: torch's default].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cuda, cuda:N or cpu.")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads on a CPU.")
@click.option("--seed", default=0, show_default=True, type=int, help="Inputs and phantoms.")
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every figure as JSON (rewritten after each row).",
)
@click.option(
    "--markdown",
    "markdown_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the tables as markdown (rewritten after each row).",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write throughput.png and latency.png (against batch size, per backend) here.",
)
def bench_command(
    model, name, runs, exports, backends, batch_sizes, size, data, iters, warmup, repeats,
    parity_n, stage_files, inductor_mode, device, threads, seed, json_out, markdown_out,
    plots_dir,
) -> None:  # fmt: skip
    """Time one model on every backend side by side, with parity against eager fp32.

    \b
    Per backend × batch size: images/s (± std over repeats), latency p50/p90/p99 per batch and
    per image, peak memory, and on a GPU utilisation, power and J/image (NVML). Backends that
    cannot run here are listed with the reason. Then F1, recall, label agreement and max |Δprob|
    against eager fp32, and the stages of scoring (decode, host→device, compute, device→host).
    With no options: the newest export, else eb3un+eb3 at random init on synthetic phantoms.
      ptxfast bench --json bench.json --markdown bench.md --plots bench-plots/
      ptxfast bench --cascade eb3un+eb3 --runs runs --backends eager,torchscript-fp16,tensorrt
    """
    from ptxfast.benchmarking import BenchConfig, BenchError, render, run_bench

    cfg = BenchConfig(
        model=model, name=name, runs=runs, exports=exports,
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None,
        batch_sizes=_int_list("--batch-sizes", batch_sizes), size=size, data=data,
        device=device, warmup=warmup, iters=iters, repeats=repeats, parity_n=parity_n,
        stage_n=stage_files, inductor_mode=inductor_mode, threads=threads, seed=seed,
        json_out=json_out, markdown_out=markdown_out,
    )  # fmt: skip
    try:
        report = run_bench(cfg, say=lambda line: console.print(line, highlight=False))
    except BenchError as e:
        raise PtxfastError(str(e)) from None
    render.print_report(report.as_dict(), Console(), console, plots_dir, (json_out, markdown_out))


if __name__ == "__main__":
    main(sys.argv[1:])
