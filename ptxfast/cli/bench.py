"""bench: throughput, latency, memory and parity of every backend side by side."""

from __future__ import annotations

from rich.console import Console

from ptxfast.cli import app
from ptxfast.cli.app import DIR, FILE, CliError, cli, console, option


def _int_list(flag: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise CliError(f"{flag} {text!r}: give positive integers separated by commas, e.g. 1,8")
    return values


@cli.command("bench")
@option(
    "--model",
    type=FILE,
    help="Exported artifact (model file or .json sidecar); on-the-fly backends use its checkpoint.",
)
@option(
    "--cascade",
    "name",
    help="Model to build on the fly: a cascade (or any of the eight) from RUNS/<name>/best.pt, "
    "else at random init.",
)
@app.runs_option("Checkpoints [default: runs].", default=None)
@app.exports_option("Where a run without --model/--cascade looks for the newest artifact.")
@option(
    "--backends",
    help="Comma list of eager, eager-fp16, eager-bf16, torchscript, torchscript-fp16, "
    "torchscript-bf16, inductor, inductor-fp16, inductor-bf16, tensorrt, tensorrt-fp32, "
    "onnxruntime, openvino, openvino-bf16, artifact [default: every one for this device].",
)
@option("--batch-sizes", help="Comma list [default: 1,8,32,64 on a GPU, 1,8 on a CPU].")
@app.size_option("Input side [default: the artifact's or checkpoint's; else 512 GPU, 128 CPU].")
@app.data_option(
    "Labelled dataset: its test split is the parity set and gives the files to decode "
    "[default: the model's training data, else synthetic phantoms]."
)
@option("--iters", min=1, help="Timed calls per repeat [GPU 20, CPU 4].")
@option("--warmup", min=1, help="Untimed calls first [GPU 5, CPU 2].")
@option("--repeats", min=1, help="Repeats of --iters [GPU 3, CPU 2].")
@option("--parity-n", min=0, help="Parity images, 0 for none [GPU 64, CPU 32].")
@option(
    "--stage-files",
    min=0,
    help="Files decoded for the stage breakdown, 0 for none [GPU 24, CPU 8].",
)
@option(
    "--inductor-mode",
    help="torch.compile mode for inductor (e.g. max-autotune) [default: torch's default].",
)
@app.device_option()
@app.threads_option("Torch threads on a CPU.")
@app.seed_option("Inputs and phantoms.")
@app.json_option("json_out", "Write every figure as JSON (rewritten after each row).")
@option(
    "--markdown",
    "markdown_out",
    type=FILE,
    help="Write the tables as markdown (rewritten after each row).",
)
@option(
    "--plots",
    "plots_dir",
    type=DIR,
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
    from ptxfast.benchmarking import BenchConfig, render, run_bench

    cfg = BenchConfig(
        model=model, name=name, runs=runs, exports=exports,
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None,
        batch_sizes=_int_list("--batch-sizes", batch_sizes), size=size, data=data,
        device=device, warmup=warmup, iters=iters, repeats=repeats, parity_n=parity_n,
        stage_n=stage_files, inductor_mode=inductor_mode, threads=threads, seed=seed,
        json_out=json_out, markdown_out=markdown_out,
    )  # fmt: skip
    report = run_bench(cfg, say=lambda line: console.print(line, highlight=False))
    render.print_report(report.as_dict(), Console(), console, plots_dir, (json_out, markdown_out))
