"""The fused, frozen TorchScript cascade against the eager fp32 cascade, on the CPU.

Each variant is a `ptxfast.inference.runtime.Predictor` (what scoring runs): eager fp32 (the baseline, as
a training script would run it), TorchScript fp32 (traced, frozen, channels_last, convolutions
fused onto oneDNN by `ptxfast.inference.cpu_fusion.fuse_for_cpu`) and TorchScript bf16 (the same graph in bf16),
plus, on request, eager bf16 autocast, the frozen graphs without the CPU rewrite ("frozen
only"), `optimize_for_inference` and inductor. All variants are built and warmed up first, then
timed interleaved — one call of each in turn, `--iters` rounds — so load that comes and goes on
a shared machine falls on every variant alike; the table gives the median and the best call.
Parity is measured against eager fp32 on synthetic phantoms by `ptxfast.metrics.parity` (its
keys: max_abs_diff, agreement, f1 / f1_ref, ...).

    python bench/export_bench.py                       # eb3un+eb3, random init, batch 8, 256²
    python bench/export_bench.py --runs runs --json bench/results/export_cpu.json

Several people may share the machine: the load average is printed before and after, and timings
taken under load are slower and noisier than the machine can do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ptxfast.benchmarking.parity import probabilities
from ptxfast.environment import resolve_device, versions
from ptxfast.export import phantom_batches
from ptxfast.files import write_json
from ptxfast.inference.runtime import Predictor, build_predictor
from ptxfast.metrics import parity
from ptxfast.timing import timed_calls

VARIANTS = {
    # name: (backend, precision, channels_last, optimize_for_inference, cpu_fusion)
    "eager fp32": ("eager", "fp32", False, False, False),
    "eager fp32 channels_last": ("eager", "fp32", True, False, False),
    "eager bf16 autocast": ("eager", "bf16", True, False, False),
    "torchscript fp32": ("torchscript", "fp32", True, False, True),
    "torchscript bf16": ("torchscript", "bf16", True, False, True),
    "torchscript fp32 frozen only": ("torchscript", "fp32", True, False, False),
    "torchscript bf16 frozen only": ("torchscript", "bf16", True, False, False),
    "torchscript fp32 optimized": ("torchscript", "fp32", True, True, True),
    "torchscript bf16 optimized": ("torchscript", "bf16", True, True, True),
    "eager fp16 autocast": ("eager", "fp16", True, False, False),  # CUDA only
    "torchscript fp16": ("torchscript", "fp16", True, False, False),  # CUDA only
    "tensorrt fp16": ("tensorrt", "fp16", True, False, False),  # CUDA + torch-tensorrt
    "inductor fp32": ("inductor", "fp32", True, False, False),
    "inductor bf16": ("inductor", "bf16", True, False, False),
}
DEFAULT_VARIANTS = ("eager fp32", "torchscript fp32", "torchscript bf16")


def time_interleaved(
    predictors: list[Predictor], x: torch.Tensor, warmup: int, iters: int
) -> list[dict[str, float]]:
    """Median, mean and best seconds per batch of each predictor: `warmup` untimed calls each,
    then `iters` rounds that time one call of every predictor in turn (A B C A B C ...)."""
    for predictor in predictors:
        for _ in range(warmup):
            predictor(x)
    times: list[list[float]] = [[] for _ in predictors]
    for _ in range(iters):
        for predictor, own in zip(predictors, times, strict=True):
            own += timed_calls(lambda p=predictor: p(x), predictor.device, 1)
    return [
        {"median_s": statistics.median(t), "mean_s": statistics.fmean(t), "min_s": min(t)}
        for t in times
    ]


def parity_figures(
    predictor: Predictor, ref_probs: np.ndarray, data: list[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float | int | None]:
    """`metrics.parity` of `predictor` against the baseline's probabilities on `data`."""
    labels = np.concatenate([y.numpy() for _, y in data])
    threshold = float(predictor.thresholds["label"])
    return parity(ref_probs, probabilities(predictor, data), labels, threshold=threshold)


def run(args: argparse.Namespace) -> dict:
    """Build each variant, time it, measure its parity; a flat dict per variant."""
    source = args.name
    if args.runs:
        source = Path(args.runs) / args.name / "best.pt"
        if not source.is_file():
            sys.exit(f"no checkpoint {source}; train it or leave out --runs (random init)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch = (1, args.batch, max(args.batch, 32))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, args.size, args.size, generator=g)
    data = list(phantom_batches(args.parity_n, args.size, args.batch, seed=1))
    load_before = os.getloadavg()
    built = []
    for name in args.variants:
        backend, precision, channels_last, optimize, cpu_fusion = VARIANTS[name]
        start = time.perf_counter()
        predictor = build_predictor(
            backend,
            source,
            size=args.size,
            precision=precision,
            device=device,
            batch=batch,
            channels_last=channels_last,
            check_trace=False,
            optimize=optimize,
            cpu_fusion=cpu_fusion,
        )
        built.append((name, predictor, time.perf_counter() - start))
        print(f"built {name} in {built[-1][2]:.1f} s", flush=True)
    timings = time_interleaved([p for _, p, _ in built], x, args.warmup, args.iters)
    ref_probs = probabilities(built[0][1], data)  # the first variant (eager fp32) is the baseline
    rows = []
    for (name, predictor, build_s), timing in zip(built, timings, strict=True):
        backend, precision, channels_last, optimize, cpu_fusion = VARIANTS[name]
        row = {
            "variant": name,
            "backend": backend,
            "precision": precision,
            "channels_last": channels_last,
            "cpu_fusion": cpu_fusion and backend == "torchscript",
            "batch": args.batch,
            "size": args.size,
            "build_s": build_s,
            **timing,
            "images_per_s": args.batch / timing["median_s"],
            **parity_figures(predictor, ref_probs, data),
        }
        rows.append(row)
        print(
            f"{name:30s} {timing['median_s'] * 1e3:9.1f} ms/batch (best {timing['min_s'] * 1e3:.1f})"
            f"  {row['images_per_s']:7.2f} img/s  max|Δp| {row['max_abs_diff']:.2g}",
            flush=True,
        )
    base, base_best = rows[0]["median_s"], rows[0]["min_s"]
    for row in rows:
        row["speedup"] = base / row["median_s"]
        row["speedup_best"] = base_best / row["min_s"]
    env = versions(device)
    return {
        "model": args.name,
        "weights": str(source) if args.runs else "random init",
        "device": str(device),
        "torch": env["torch"],
        "threads": env["torch_threads"],
        "cpu_capability": env["cpu_capability"],
        "cpu_bf16": env["cpu_bf16"],
        "cpus": env["cpus"],
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "iters": args.iters,
        "warmup": args.warmup,
        "timing": "interleaved: one call of each variant in turn, iters rounds",
        "parity_images": sum(len(y) for _, y in data),
        "rows": rows,
    }


def render(result: dict) -> None:
    """Print the result as a table."""
    from rich.console import Console
    from rich.table import Table

    title = (
        f"{result['model']} ({result['weights']}) on {result['device']}, "
        f"batch {result['rows'][0]['batch']}, {result['rows'][0]['size']}², "
        f"{result['threads']} threads, load {result['load_before'][0]:.1f} → "
        f"{result['load_after'][0]:.1f}"
    )
    table = Table(title=title)
    cols = ("variant", "ms/batch", "best ms", "img/s", "speedup", "best-vs-best", "max |Δprob|")
    for col in (*cols, "agreement", "build s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in result["rows"]:
        table.add_row(
            r["variant"],
            f"{r['median_s'] * 1e3:.1f}",
            f"{r['min_s'] * 1e3:.1f}",
            f"{r['images_per_s']:.2f}",
            f"{r['speedup']:.2f}×",
            f"{r['speedup_best']:.2f}×",
            f"{r['max_abs_diff']:.2g}",
            f"{r['agreement']:.1%}",
            f"{r['build_s']:.1f}",
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="eb3un+eb3", help="model (default eb3un+eb3)")
    p.add_argument("--runs", help="read RUNS/<name>/best.pt (default: random init)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=5, help="timed rounds (one batch per variant each)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--parity-n", type=int, default=16, help="phantoms for the parity figures")
    p.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        choices=list(VARIANTS),
        help="the first is the baseline",
    )
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    result = run(args)
    render(result)
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
