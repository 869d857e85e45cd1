"""GPU against CPU decoding of the same compressed DICOMs (a step of bench/gpu_check.sh).

Writes N windowed radiographs (`decode_bench.radiograph`, 12 bits stored) per syntax in the
syntaxes the GPU path takes (JPEG lossless SV1, JPEG baseline 8-bit, JPEG 2000 lossless, HTJ2K
lossless) and times, per syntax, what one scoring process does with them:

  cpu   ptxfast.data.dicom.load_image(path, size) per file: the decoding worker's work
  gpu   load_image_or_frame per file (the worker's header checks, the frame handed over) plus
        `GpuFrames.finish` per batch (one decoder call, window + area resize on the device,
        the first frame of the syntax checked against the CPU), synchronised

On a CUDA device with nvImageCodec the decoder is `NvImageCodec`; otherwise (`--device cpu`,
the check's dry run) the CPU stand-in `CpuFrameDecoder`, which proves the steps, not the speed.

    python bench/gpu_decode_bench.py --device cuda --n 32 --side 2048 --json d.json --markdown d.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from pydicom import uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_bench import radiograph, write  # noqa: E402

from ptxfast.data.dicom import load_image, load_image_or_frame  # noqa: E402
from ptxfast.score import gpu_decode  # noqa: E402
from ptxfast.score.decode import HandOver, Meta, collate  # noqa: E402

SYNTAXES = [
    ("JPEG lossless SV1", uid.JPEGLosslessSV1, 12),
    ("JPEG baseline 8-bit", uid.JPEGBaseline8Bit, 8),
    ("JPEG 2000 lossless", uid.JPEG2000Lossless, 12),
    ("HTJ2K lossless", uid.HTJ2KLossless, 12),
]


# Every frame of the GPU syntaxes goes to `GpuFrames`, which decides GPU or CPU by parity.
_EVERY_GPU_FRAME = HandOver(gpu_decode.GPU_SYNTAXES)


def _gpu_pass(paths: list[Path], size: int, batch: int, frames: gpu_decode.GpuFrames) -> list:
    out = []
    for start in range(0, len(paths), batch):
        items = []
        for i in range(start, min(start + batch, len(paths))):
            img, _ = load_image_or_frame(paths[i], size, hand_over=_EVERY_GPU_FRAME)
            items.append((img, Meta(index=i), 0.0))
        out.append(frames.finish(collate(items)).images)
    if frames.device.type == "cuda":
        torch.cuda.synchronize(frames.device)
    return out


def run(args: argparse.Namespace, folder: Path) -> list[dict]:
    dev = torch.device(args.device)
    cuda = dev.type == "cuda" and gpu_decode._missing(dev) is None
    decoder = gpu_decode.NvImageCodec(dev) if cuda else gpu_decode.CpuFrameDecoder(dev)
    rng = np.random.default_rng(0)
    rows = []
    for label, syntax, bits in SYNTAXES:
        paths = [
            write(
                folder / f"{syntax}_{i}.dcm",
                radiograph(args.side, args.side, bits, rng),
                syntax,
                bits,
            )
            for i in range(args.n)
        ]
        frames = gpu_decode.GpuFrames(decoder, dev, args.size, lambda i, p=paths: p[i])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _gpu_pass(paths[: args.batch], args.size, args.batch, frames)  # warm + parity check
        best = {"cpu": float("inf"), "gpu": float("inf")}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for p in paths:
                load_image(p, args.size)
            best["cpu"] = min(best["cpu"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            images = _gpu_pass(paths, args.size, args.batch, frames)
            best["gpu"] = min(best["gpu"], time.perf_counter() - t0)
        ours = torch.cat(images).cpu().numpy()[:, 0]
        ref = np.stack([load_image(p, args.size)[0] for p in paths])
        row = dict(
            syntax=label, bits=bits, files=args.n, decoder=decoder.name,
            cpu_files_per_s=args.n / best["cpu"], gpu_files_per_s=args.n / best["gpu"],
            max_abs_diff=float(np.abs(ours - ref).max()), gpu_frames=frames.stats["gpu_frames"],
            cpu_frames=frames.stats["cpu_frames"], turned_off=frames.stats["turned_off"],
            warnings=[str(w.message) for w in caught],
        )  # fmt: skip
        rows.append(row)
        print(
            f"{label:<22}{row['cpu_files_per_s']:>10.1f}{row['gpu_files_per_s']:>10.1f}"
            f"{row['gpu_files_per_s'] / row['cpu_files_per_s']:>8.2f}x  max |Δ| "
            f"{row['max_abs_diff']:.2g}; {row['gpu_frames']} on {decoder.name}, "
            f"{row['cpu_frames']} on the CPU"
            + ("; GPU off: " + "; ".join(row["turned_off"]) if row["turned_off"] else ""),
            flush=True,
        )
        for p in paths:
            p.unlink()
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"## Decoding: GPU against CPU ({args.side}² → {args.size}², batch {args.batch}, "
        f"{args.n} files per syntax, one scoring process)",
        "",
        "| syntax | CPU files/s | GPU files/s | GPU / CPU | max abs Δ | frames GPU / CPU | GPU off |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['syntax']} ({r['decoder']}) | {r['cpu_files_per_s']:.1f} | "
            f"{r['gpu_files_per_s']:.1f} | {r['gpu_files_per_s'] / r['cpu_files_per_s']:.2f}x | "
            f"{r['max_abs_diff']:.2g} | {r['gpu_frames']} / {r['cpu_frames']} | "
            f"{'; '.join(r['turned_off']) or '—'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=32, help="files per syntax")
    parser.add_argument("--side", type=int, default=2048, help="stored rows = columns")
    parser.add_argument("--size", type=int, default=512, help="model input side")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    print(f"{'syntax':<22}{'cpu f/s':>10}{'gpu f/s':>10}{'ratio':>9}")
    with tempfile.TemporaryDirectory(prefix="ptxfast_gpu_decode_") as tmp:
        rows = run(args, Path(tmp))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": None, "markdown": None}, "rows": rows},
                indent=1,
                default=str,
            )
        )
    if args.markdown:
        args.markdown.write_text(markdown(rows, args))


if __name__ == "__main__":
    main()
