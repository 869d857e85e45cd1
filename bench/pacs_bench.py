"""Scoring from a DICOMweb server against scoring the same files from a folder, and the cost of
sending the SRs back (STOW-RS and C-STORE), on local Orthanc servers.

Writes --n phantoms (--size pixels), starts two Orthanc servers (tests/orthanc.py: Debian's
orthanc + orthanc-dicomweb), uploads the phantoms to the first, then alternates --repeat times:
the folder, the DICOMweb root, the folder with --dicom-sr, and the DICOMweb root with --dicom-sr
sent to both servers. Prints each pass's end-to-end images/s (steady, else over the loop) and
its wall time, and the median per setting.

    python bench/pacs_bench.py --model exports/rn34un.torchscript-fp32.json --n 96 --size 256
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from orthanc import Orthanc  # noqa: E402

from ptxfast.data import synth  # noqa: E402
from ptxfast.score import ScoreConfig, score_folder  # noqa: E402
from ptxfast.score.pacs import PacsOptions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="the artifact (sidecar)")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    synth.write_dataset(base / "ph", args.n, seed=5, size=args.size, workers=1)
    folder = base / "ph" / "images"
    a, b = Orthanc(base / "a", "ORTHA"), Orthanc(base / "b", "ORTHB")
    rates: dict[str, list[float]] = {}
    try:
        a.upload(sorted(folder.rglob("*.dcm")))
        settings = {
            "folder": (str(folder), {}),
            "DICOMweb": (a.dicomweb, {}),
            "folder + SR": (str(folder), {"sr": True}),
            "DICOMweb + SR sent twice": (a.dicomweb, {"sr": True, "send": (a.dicomweb, b.dicom)}),
        }
        for r in range(args.repeat):
            for i, (name, (root, how)) in enumerate(settings.items()):
                out = base / f"{r}-{i}.csv"
                t0 = time.perf_counter()
                s = score_folder(
                    ScoreConfig(
                        root,
                        out,
                        model=args.model,
                        device="cpu",
                        batch_size=args.batch_size,
                        model_only_iters=0,
                        sr_dir=out.with_suffix(".sr") if how else None,
                        pacs=PacsOptions(send=how["send"]) if "send" in how else None,
                    )  # fmt: skip
                )
                rate = s.steady_images_per_s or s.images_per_s
                rates.setdefault(name, []).append(rate)
                sent = ", ".join(f"{t['sent']} to {t['target']}" for t in s.sent)
                print(
                    f"{name:26s} {rate:6.1f} images/s, wall {time.perf_counter() - t0:5.1f} s"
                    + (f"; sent {sent}" if sent else ""),
                    flush=True,
                )
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(base, ignore_errors=True)  # the phantoms, both servers' storage, the CSVs
    print(
        f"\n| setting | median images/s ({args.n} phantoms {args.size}², batch {args.batch_size}) |"
    )
    print("|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
