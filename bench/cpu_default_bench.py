"""The CPU default artifact against OpenVINO bf16 and eager fp32, in one process, back to back.

For each size: the artifact `ptxfast export` chose on this CPU (loaded as `ptxfast score` loads
it: `load_predictor` on the newest sidecar), OpenVINO bf16 in throughput mode run directly on an
ONNX export of the same fused graph (`ptxfast.inference.onnx_graph`), and eager fp32; all timed
interleaved at one batch size (`ptxfast.export.time_predictors`), with label agreement and max
|Δp| against eager fp32 on the dataset's validation split (`ptxfast.metrics.parity`).

    python bench/cpu_default_bench.py --runs demo/runs --data demo/phantoms --exports demo/exports
    python bench/cpu_default_bench.py ... --size 256 --random-init   # eb3un+eb3 at 256², untrained

At a size other than the checkpoint's, `--random-init` exports an untrained eb3un+eb3 at that
size with the CPU default choice first (speed figures; its parity is that of random weights).
The table also gives each variant's arithmetic rate: the fused graph's floating-point operations
per image (torch's FlopCounterMode: convolutions and matrix products, 2 per multiply-add) times
its images/s, against the cores' fp32 FMA peak (cores × clock × FLOPs per cycle, from the CPU's
vector flags), and what share of that peak 4× eager fp32 would need.
The markdown table goes to stdout (and `--markdown FILE`, appended).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ptxfast.environment import versions
from ptxfast.export import (
    ExportConfig,
    collect_outputs,
    compare_outputs,
    dataset_batches,
    export_model,
    time_predictors,
)
from ptxfast.files import write_json
from ptxfast.inference.artifact import latest_artifact
from ptxfast.inference.fused import fuse
from ptxfast.inference.onnx_graph import openvino_module, to_onnx
from ptxfast.inference.runtime import Predictor, build_predictor, load_predictor
from ptxfast.training import write_untrained


def _default_artifact(args, work: Path) -> Path:
    """The sidecar of the CPU default artifact at `args.size`."""
    if not args.random_init:
        return latest_artifact(args.exports, args.name)
    runs = work / "runs"
    write_untrained(runs, args.name, args.size)
    cfg = ExportConfig(
        args.name, runs=runs, out=work / "exports", device="cpu", data=args.data,
        batch=(1, args.batch, 32),
    )  # fmt: skip
    return export_model(cfg, say=lambda line: print("  " + line, file=sys.stderr)).sidecar_path


def _flops_per_image(module: torch.nn.Module, size: int) -> float:
    """Floating-point operations of one forward pass of `module` on one `size`² image."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.rand(1, 1, size, size))
    return float(counter.get_total_flops())


def _fma_peak(threads: int) -> tuple[float, str]:
    """(fp32 FLOP/s, how it was reckoned): `threads` cores × the clock /proc/cpuinfo reports ×
    FLOPs per cycle (two FMA pipes: 64 with AVX-512, 32 with AVX2 + FMA, else 8)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith("flags")), []))  # fmt: skip
    mhz = next((float(ln.split(":", 1)[1]) for ln in info.splitlines()
                if ln.startswith("cpu MHz")), 0.0)  # fmt: skip
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    how = f"{threads} cores × {mhz / 1000:.2f} GHz × {per_cycle} fp32 FLOPs/cycle"
    return threads * mhz * 1e6 * per_cycle, how


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="eb3un+eb3")
    ap.add_argument("--runs", type=Path, default=Path("demo/runs"))
    ap.add_argument("--exports", type=Path, default=Path("demo/exports"))
    ap.add_argument("--data", type=Path, default=Path("demo/phantoms"))
    ap.add_argument("--size", type=int, default=None, help="[default: the checkpoint's]")
    ap.add_argument("--random-init", action="store_true", help="untrained model at --size")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--calls", type=int, default=10, help="timed calls of each, interleaved")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ptxfast-cpu-bench-") as tmp:
        work = Path(tmp)
        side = _default_artifact(args, work)
        default = load_predictor(side)
        size = default.size
        checkpoint = (
            work / "runs" / args.name / "best.pt"
            if args.random_init
            else args.runs / args.name / "best.pt"
        )
        eager = build_predictor("eager", checkpoint, size=size, device="cpu")
        fused = fuse(eager.module.model, args.name, size, channels_last=False)
        to_onnx(fused, work / "graph.onnx")
        ov = Predictor(
            openvino_module(work / "graph.onnx", precision="bf16", hint="THROUGHPUT"),
            name=args.name, size=size, backend="openvino", precision="bf16",
            device=torch.device("cpu"), channels_last=False, path="onnx", mask_output=True,
        )  # fmt: skip
        variants = {
            f"default artifact ({default.backend} {default.precision})": default,
            f"OpenVINO bf16 throughput ({ov.module.info['requests']} requests, runs "
            f"{ov.module.info['inference_precision']})": ov,
            "eager fp32": eager,
        }
        batches, n = dataset_batches(args.data, size, args.batch)
        batches = list(batches)
        ref = collect_outputs(eager, batches)
        parity = {
            k: compare_outputs(collect_outputs(p, batches), ref, p.thresholds["label"])
            for k, p in variants.items()
        }
        speeds = time_predictors(list(variants.values()), args.batch, size, args.calls)
        flops = _flops_per_image(fused, size)
    wall = time.perf_counter() - t0
    ips = dict(zip(variants, speeds, strict=True))
    names = list(variants)
    peak, peak_how = _fma_peak(args.threads)
    rows = []
    for k in names:
        rows.append(
            {
                "variant": k,
                "images_per_s": ips[k],
                "vs_openvino_bf16": ips[k] / ips[names[1]],
                "vs_eager": ips[k] / ips[names[2]],
                "agreement": parity[k]["agreement"],
                "max_abs_diff": parity[k]["max_abs_diff"],
                "gflop_per_s": ips[k] * flops / 1e9,
                "share_of_fma_peak": ips[k] * flops / peak if peak else None,
            }
        )
    env = versions("cpu")
    head = (
        f"### {args.name} at {size}², batch {args.batch}, {args.threads} threads"
        f"{' (random init)' if args.random_init else ''}\n\n"
        f"- {env['cpu'] or platform.machine()}, bf16 units: {env['cpu_bf16'] or 'none'}; "
        f"torch {env['torch']}; load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after; {wall:.0f} s\n"
        f"- default artifact: {side.name} (chosen at export: "
        f"{', '.join(_choices(default))})\n"
        f"- parity: validation split of {args.data} ({n} images) against eager fp32\n"
        f"- compute: {flops / 1e9:.2f} GFLOP per image; fp32 FMA peak {peak / 1e9:.0f} GFLOP/s "
        f"({peak_how})\n\n"
        "| variant | images/s | × OpenVINO bf16 | × eager fp32 | label agreement | max \\|Δp\\| "
        "| GFLOP/s | share of FMA peak |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['variant']} | {r['images_per_s']:.1f} | {r['vs_openvino_bf16']:.2f} | "
        f"{r['vs_eager']:.2f} | {r['agreement']:.2%} | {r['max_abs_diff']:.2g} | "
        f"{r['gflop_per_s']:.0f} | {_share(r['share_of_fma_peak'])} |"
        for r in rows
    ]
    four = 4 * ips[names[2]]  # the acceptance's "4× eager fp32"
    need = (f"4× eager fp32 would be {four:.1f} images/s, "
            f"{_share(four * flops / peak if peak else None)} of the FMA peak.")  # fmt: skip
    text = head + "\n".join(lines) + "\n\n" + need + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + text)
    if args.json:
        write_json(args.json, {"size": size, "rows": rows})
    return 0


def _share(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def _choices(predictor: Predictor) -> list[str]:
    sel = (predictor.sidecar or {}).get("selection") or {}
    out = []
    for c in sel.get("candidates", []):
        mark = "→ " if c["chosen"] else ""
        gate = "" if c["passed"] else " failed gate"
        out.append(f"{mark}{c['backend']} {c['precision']} {c['images_per_s']:.1f}/s{gate}")
    return out or ["forced backend"]


if __name__ == "__main__":
    sys.exit(main())
