"""Training throughput: the paper's way (fp32, contiguous) against NHWC and AMP + NHWC.

Times `ptxfast.training.train_step` (forward, BCE loss, backward, Adam step) on a fixed random
batch, after warm-up, synchronizing the device around each timed step, and prints images/s
side by side; `--json PATH` writes the rows. Modes: "paper" (fp32, contiguous), "nhwc" (fp32,
channels_last: what `ptxfast train` runs on a CPU) and "fast" (AMP + channels_last: what it runs
on CUDA). Works on CPU with tiny sizes too (there "fast" is bf16 autocast, which pays off only on
CPUs with bf16 units).

    python bench/train_bench.py --arch eb3un --size 512 --batch 4 --device cuda --json out.json
    python bench/train_bench.py --arch rn34,eb3un --size 64 --batch 8 --steps 3   # CPU smoke run
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from typing import Any

import torch

from ptxfast import MODEL_NAMES
from ptxfast.environment import resolve_device, versions
from ptxfast.files import write_json
from ptxfast.models import build, kind_of
from ptxfast.timing import timed_calls
from ptxfast.training import Step, train_step

MODES = ("paper", "nhwc", "fast")


def _batch(name: str, size: int, batch: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, size, size, generator=g)
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.98).float()
    y = (torch.arange(batch) % 2).float()
    return tuple(t.to(device) for t in (x, mask, y))


def bench_one(
    name: str,
    mode: str,
    size: int,
    batch: int,
    device: torch.device,
    steps: int,
    warmup: int,
    amp: str,
) -> dict[str, Any]:
    """images/s of training `name` in `mode` (one of MODES)."""
    torch.manual_seed(0)
    model = build(name, weights=None).to(device)
    fast = mode == "fast"
    nhwc = mode in ("nhwc", "fast")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp] if fast else None
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    kind = "classifier" if kind_of(name) == "cascade" else kind_of(name)
    step = Step(kind, device, amp_dtype=dtype, channels_last=nhwc)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=fast and dtype == torch.float16)
    data = _batch(name, size, batch, device)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        train_step(model, data, optimizer, step, scaler)
    last = {}

    def one_step() -> None:
        last["loss"], _ = train_step(model, data, optimizer, step, scaler)

    times = timed_calls(one_step, device, steps)
    loss = last["loss"]
    median = statistics.median(times)
    return {
        "arch": name,
        "mode": mode,
        "precision": amp if fast else "fp32",
        "memory_format": "channels_last" if nhwc else "contiguous",
        "size": size,
        "batch": batch,
        "device": str(device),
        "steps": steps,
        "step_ms_median": 1000 * median,
        "step_ms_min": 1000 * min(times),
        "images_per_s": batch / median,
        "peak_memory_mib": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "loss_finite": bool(torch.isfinite(loss)),
    }


def _environment(device: torch.device) -> dict[str, Any]:
    found = versions(device)
    env = {k: found[k] for k in ("ptxfast", "torch", "python")}
    env["cpu_threads"] = found["torch_threads"]
    if device.type == "cuda":
        env["gpu"] = found["gpu"]
    return env


def _cell(modes: dict[str, dict], mode: str) -> str:
    """images/s of `mode` (with its speed-up over "paper" when both ran)."""
    r, paper = modes.get(mode), modes.get("paper")
    if r is None:
        return "-"
    text = f"{r['images_per_s']:.1f}" + (f" ({r['precision']})" if mode == "fast" else "")
    if paper and mode != "paper":
        text += f" {r['images_per_s'] / paper['images_per_s']:.2f}×"
    return text


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="training throughput (images/s, median step)")
    for col in ("arch", "size", "batch", "paper fp32", "fp32 NHWC", "fast", "peak MiB (fast)"):
        table.add_column(col, justify="left" if col == "arch" else "right")
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_key.setdefault((r["arch"], r["size"], r["batch"]), {})[r["mode"]] = r
    for (arch, size, batch), modes in by_key.items():
        mem = modes["fast"].get("peak_memory_mib") if "fast" in modes else None
        table.add_row(
            arch, str(size), str(batch), *(_cell(modes, m) for m in MODES),
            f"{mem:.0f}" if mem is not None else "-",
        )  # fmt: skip
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="eb3un", help=f"comma list of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--amp",
        choices=("fp16", "bf16"),
        help="fast-path dtype (default: fp16 on CUDA, bf16 on CPU)",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES)
    )
    parser.add_argument("--json", help="write the rows and the environment to this file")
    args = parser.parse_args(argv)

    logging.getLogger("ptxfast.models").setLevel(logging.ERROR)  # random init is fine here
    device = resolve_device(args.device)
    amp = args.amp or ("fp16" if device.type == "cuda" else "bf16")
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [a for a in archs if a not in MODEL_NAMES] + [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"unknown {bad}; archs: {', '.join(MODEL_NAMES)}; modes: {', '.join(MODES)}")
    if args.size % 32:
        parser.error("--size must be a multiple of 32")
    rows = [
        bench_one(a, m, args.size, args.batch, device, args.steps, args.warmup, amp)
        for a in archs
        for m in modes
    ]
    _table(rows)
    if args.json:
        write_json(args.json, {"environment": _environment(device), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
