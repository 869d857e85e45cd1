"""export: fuse a model into one graph, build it for a runtime, gate it on parity."""

from __future__ import annotations

import click
from rich.console import Console

from ptxfast.cli import app
from ptxfast.cli.app import DIR, FILE, CliError, cli, console, option
from ptxfast.export.plan import BACKEND_ALIASES
from ptxfast.inference.backends import EXPORTABLE

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
        command = option(flag, type=kind, help=text)(command)
    return command


@cli.command("export")
@option("--cascade", help="Cascade to export: rn34un+rn34, rn34un+eb3, eb3un+rn34, eb3un+eb3.")
@option("--model", help="Classifier or segmenter to export: rn34, eb3, rn34un, eb3un.")
@app.runs_option("Checkpoints: RUNS/<name>/best.pt.")
@option("--checkpoint", type=FILE, help="Export this checkpoint instead of RUNS/<name>/best.pt.")
@option(
    "--out",
    default="exports",
    type=DIR,
    help="Artifacts go to OUT/<name>.<backend>-<precision>.{ts,ep,onnx,json}.",
)
@option(
    "--backend",
    type=click.Choice([*EXPORTABLE, *BACKEND_ALIASES]),
    help="[default: on CUDA tensorrt where it can run, else torchscript; on a CPU the fastest "
    "candidate that passes the gate] onnx = onnxruntime (the portable .onnx artifact).",
)
@option(
    "--precision",
    type=click.Choice(["fp16", "bf16", "fp32"]),
    help="[default: fp16 on CUDA, fp32 on CPU]; bf16 suits CPUs with bf16 units (avx512_bf16, AMX).",
)
@option("--batch", help="Batch range MIN:OPT:MAX the artifact serves [default: 1:8:32].")
@app.size_option("Input side in pixels [default: the checkpoint's training size].")
@app.device_option("cpu, cuda, cuda:1 [default: cuda when present].", default=None)
@app.data_option(
    "Labelled dataset whose validation split gates parity [default: the recipe's, else synthetic "
    "phantoms]."
)
@option(
    "--profile",
    help="Export profile: a name in export/ (cpu-fp32, cpu-bf16, gpu-fp16, ...) or a .toml file.",
)
@option(
    "--return-mask/--no-return-mask",
    default=None,
    help="Also return the N×1×S×S mask [default: no].",
)
@option(
    "--parity-n",
    min=1,
    default=200,
    help="Synthetic phantoms for the gate when there is no dataset.",
)
@app.seed_option("Seed of the synthetic phantoms.")
@_tolerance_options
@option(
    "--operating-point",
    metavar="recall=R|threshold=T|calibrated",
    help="How the artifact labels: the threshold `ptxfast evaluate` chose on validation for "
    "recall R, a given threshold T, or calibrated probabilities above 0.5 [default: the "
    "model's rule, p > 0.5; segmenters 0.3].",
)
@option(
    "--tta",
    type=click.Choice(["none", "hflip"]),
    default="none",
    help="hflip: average each image with its left-right mirror inside the graph (2x compute).",
)
@option(
    "--triton",
    type=DIR,
    help="Also write a Triton Inference Server model repository here: <model>/config.pbtxt and "
    "<model>/1/model.onnx (and <model>_tensorrt/1/model.plan after a TensorRT export).",
)
def export_command(
    cascade, model, runs, checkpoint, out, backend, precision, batch, size, device, data, profile,
    return_mask, parity_n, seed, operating_point, tta, triton, **tolerance_options,
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
      ptxfast export --cascade eb3un+eb3 --backend onnx --triton models/
    """
    from ptxfast.errors import first_line
    from ptxfast.export import ExportConfig, ParityError, export_model, parse_batch
    from ptxfast.export.render import figures_table, result_tables

    if bool(cascade) == bool(model):
        raise CliError(
            "name one model: --cascade NAME (a cascade) or --model NAME (the other four)"
        )
    name = cascade or model
    try:
        cfg = ExportConfig(
            name=name, option="cascade" if cascade else "model", runs=runs, out=out,
            checkpoint=checkpoint, backend=backend, precision=precision,
            batch=parse_batch(batch) if batch else None, size=size, device=device, data=data,
            profile=profile, return_mask=return_mask, parity_n=parity_n, seed=seed,
            tolerance={k: v for k, v in tolerance_options.items() if v is not None},
            operating_point=operating_point, tta=tta, triton=triton,
        )  # fmt: skip
        result = export_model(
            cfg, say=lambda line: console.print(line, highlight=False, markup=False)
        )
    except ParityError as e:  # the figures beside the one line
        console.print(figures_table(e.figures))
        raise
    except RuntimeError as e:  # a TensorRT build failure: one line, not a traceback
        raise CliError(f"export of {name} failed: {first_line(e)}") from None
    for table in result_tables(result):
        Console().print(table)
