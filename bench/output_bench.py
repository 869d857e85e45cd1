"""Scoring with every output (PNG mask + overlay, DICOM SEG, DICOM SR): output-writing processes
against threads of the scoring process, back to back on the same files.

Links the first --n DICOMs of --data into a scratch folder and scores it with the newest
artifact under --exports (`ptxfast score --masks --dicom-seg --dicom-sr`), once per value of
--output-workers (0: two threads of the scoring process) and --repeat times over, alternating,
so load from other processes hits every setting alike. Prints a markdown table (and appends
it to --markdown): end-to-end images/s of each pass, the median, and its ratio to threads.

    python bench/output_bench.py --data demo/phantoms --exports demo/exports --n 120
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ptxfast.environment import versions
from ptxfast.score import ScoreConfig, score_folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("demo/phantoms"))
    ap.add_argument("--exports", type=Path, default=Path("demo/exports"))
    ap.add_argument("--n", type=int, default=120, help="DICOMs scored per pass")
    ap.add_argument("--output-workers", default="0,2", help="comma list; 0: threads")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args(argv)
    settings = [int(v) for v in args.output_workers.split(",")]
    files = sorted(args.data.rglob("*.dcm"))[: args.n]
    if not files:
        sys.exit(f"no DICOMs under {args.data}; run `ptxfast synth {args.data}` first")
    load_before = os.getloadavg()
    rates: dict[int, list[float]] = {w: [] for w in settings}
    written = {}
    with tempfile.TemporaryDirectory(prefix="ptxfast-output-bench-") as tmp:
        root = Path(tmp) / "in"
        root.mkdir()
        for f in files:
            (root / f.name).symlink_to(f.resolve())
        for _ in range(args.repeat):
            for w in settings:
                out = Path(tmp) / f"out-{w}"
                t0 = time.perf_counter()
                s = score_folder(
                    ScoreConfig(
                        root=root,
                        out=out / "preds.csv",
                        overwrite=True,
                        exports_dir=args.exports,
                        masks_dir=out / "masks",
                        seg_dir=out / "seg",
                        sr_dir=out / "sr",
                        output_workers=w,
                        model_only_iters=0,
                    )  # fmt: skip
                )
                rates[w].append(s.images_per_s or 0.0)
                written[w] = (s.positives, s.masks_written, s.segs_written, s.srs_written)
                print(f"output workers {w}: {rates[w][-1]:.2f} images/s "
                      f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)  # fmt: skip
    env = versions("cpu")
    base = statistics.median(rates[settings[0]])
    lines = [
        f"### Scoring with masks, SEG and SR: {len(files)} DICOMs of {args.data}",
        "",
        f"- {env['cpu']}, {os.cpu_count()} cores; load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after; model {s.model} ({s.backend} {s.precision}), "
        f"batch {s.batch_size}, {s.workers} decoding worker(s)",
        f"- per pass: {written[settings[0]][0]} positives, each with two PNGs and a SEG; an SR "
        "for every file",
        "",
        "| output writers | images/s end to end (each pass) | median | × threads |",
        "|---|---|---|---|",
    ]
    for w in settings:
        who = f"{w} processes" if w else "2 threads"
        med = statistics.median(rates[w])
        each = ", ".join(f"{r:.2f}" for r in rates[w])
        lines.append(f"| {who} | {each} | {med:.2f} | {med / base:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
