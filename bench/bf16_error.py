"""How far each bf16 build of a trained model moves from eager fp32, on its validation split.

For every model named: eager with autocast, ptxfast's TorchScript bf16 graph (the artifact
`ptxfast export --backend torchscript --precision bf16` writes: bf16 weights, BatchNorm folded in
float32, the image normalised in float32) and the fused model with bf16 weights run eagerly
(nothing folded: the floor bf16 weights set), each against eager fp32 by max and mean |Δp| and
label agreement (`ptxfast.export.gate`). On a CPU without bf16 units bf16 is emulated: the
errors are those of bf16 hardware, the time is not.

    python bench/bf16_error.py --runs demo/runs --data demo/phantoms eb3un eb3un+eb3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ptxfast.checkpoint import model_from_checkpoint
from ptxfast.export.data import dataset_batches
from ptxfast.export.gate import collect_outputs, compare_outputs
from ptxfast.inference.fused import fuse
from ptxfast.inference.runtime import build_predictor


def _row(name: str, variant: str, prob: np.ndarray, ref: dict, agreement: float | None) -> str:
    d = np.abs(prob - ref["prob"])
    agree = f"{agreement:.2%}" if agreement is not None else "—"
    return f"| {name} | {variant} | {d.max():.4f} | {d.mean():.5f} | {agree} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--runs", type=Path, default=Path("demo/runs"))
    ap.add_argument("--data", type=Path, default=Path("demo/phantoms"))
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    print("| model | bf16 build | max \\|Δp\\| | mean \\|Δp\\| | label agreement |")
    print("|---|---|---|---|---|")
    for name in args.models:
        ckpt = args.runs / name / "best.pt"
        eager = build_predictor("eager", ckpt, device="cpu", return_mask=True)
        batches = list(dataset_batches(args.data, eager.size, args.batch)[0])
        ref = collect_outputs(eager, batches)
        for backend, label in (("eager", "eager autocast"), ("torchscript", "TorchScript")):
            p = build_predictor(
                backend, ckpt, size=eager.size, precision="bf16", device="cpu", return_mask=True
            )
            got = collect_outputs(p, batches)
            figures = compare_outputs(got, ref, p.thresholds["label"])
            print(_row(name, label, got["prob"], ref, figures["agreement"]), flush=True)
        model, _ = model_from_checkpoint(ckpt)
        fused = fuse(model, name, eager.size, precision="bf16", channels_last=False)
        with torch.inference_mode():
            prob = np.concatenate([fused(x)[0].float().numpy() for x, _, _ in batches])
        print(_row(name, "bf16 weights, eager (nothing folded)", prob, ref, None), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
