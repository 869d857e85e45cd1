"""`ptxfast score` against the shared-core bound it prints, on compressed radiographs.

Makes (once, under --work, kept between runs) 200 JPEG-lossless SV1 DICOMs: 20 radiographs
from `decode_bench.radiograph` (2500x2048, 12 bits stored, detector-like noise), each copied 10
times with new UIDs, and the eb3un+eb3 cascade at random init exported for OpenVINO bf16 at each
--sizes side. Then runs `ptxfast score --json` on the folder with each artifact and prints, per
run: decoders, D (decoders' CPU ms per file), model-only M, the bound 1 / (1/M + D/c), the
steady end-to-end images/s and its share of the bound, the decoders' wall against CPU time per
file, and where the cores went while the decoders ran, sampled from /proc: this run's
processes (the scoring process and its decoders apart) and everything else on the machine.
The bound counts every core as the run's; the CPU the machine's other tenants took is what it
cannot count.

    python bench/score_bound_bench.py --work /tmp/score-bound --sizes 64 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
from pydicom import uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_bench import radiograph, write  # noqa: E402

from ptxfast.score.speed import busy_cpu_s, shared_core_bound  # noqa: E402

CASCADE = "eb3un+eb3"
_TICK = os.sysconf("SC_CLK_TCK")


def make_dicoms(folder: Path, unique: int, copies: int, seed: int = 1) -> Path:
    """`unique` radiographs in JPEG lossless SV1, each saved `copies` times with new UIDs
    (decoding costs the same; making them is the slow part). Files already there are kept."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(unique):
        first = folder / f"ljpeg_{i:03d}.dcm"
        if not first.exists():
            pixels = radiograph(2500, 2048, 12, np.random.default_rng([seed, i]))
            write(first, pixels, uid.JPEGLosslessSV1, 12)
        ds = None
        for k in range(1, copies):
            copy = folder / f"ljpeg_{i:03d}_{k}.dcm"
            if copy.exists():
                continue
            ds = ds or pydicom.dcmread(first)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
            ds.save_as(copy, enforce_file_format=True)
    return folder


def make_artifact(work: Path, size: int) -> Path:
    """The cascade at random init, exported for OpenVINO bf16 at size² (gated on 4 phantoms
    with open tolerances: untrained weights make the parity figures meaningless)."""
    out = work / f"exports{size}"
    sidecar = out / f"{CASCADE}.openvino-bf16.json"
    if sidecar.exists():
        return sidecar
    from ptxfast.training import write_untrained

    runs = work / f"runs{size}"
    write_untrained(runs, CASCADE, size, note="random init for score_bound_bench")
    subprocess.run(
        [sys.executable, "-m", "ptxfast", "export", "--cascade", CASCADE, "--runs", str(runs),
         "--out", str(out), "--backend", "openvino", "--precision", "bf16", "--size", str(size),
         "--device", "cpu", "--parity-n", "4", "--min-agreement", "0", "--max-df1", "1",
         "--max-dprob", "1", "--max-drecall", "1"],
        check=True,
    )  # fmt: skip
    return sidecar


def _descendants(pid: int) -> list[int]:
    """`pid`'s children, grandchildren, ... (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _rows(csv: Path) -> int:
    """Rows a ledger holds so far (its header left out)."""
    try:
        return max(0, csv.read_bytes().count(b"\n") - 1)
    except OSError:
        return 0


class CoreSampler(threading.Thread):
    """Samples a scoring run every `period` seconds: the rows its ledger holds, the CPU of the
    scoring process and of its children (the decoders), and the machine's busy CPU."""

    def __init__(self, proc: subprocess.Popen, csv: Path, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.proc, self.csv, self.period = proc, csv, period
        # (t, scorer CPU, children's CPU, machine busy, rows)
        self.samples: list[tuple[float, float, float, float, int]] = []
        self.children: dict[int, list] = {}  # pid: [first sample, CPU seconds at its last]

    def run(self) -> None:
        while self.proc.poll() is None:
            for k in _descendants(self.proc.pid):
                self.children.setdefault(k, [len(self.samples), 0.0])[1] = _cpu_s(k)
            main, kids = _cpu_s(self.proc.pid), sum(c[1] for c in self.children.values())
            self.samples.append((time.perf_counter(), main, kids, busy_cpu_s(), _rows(self.csv)))
            time.sleep(self.period)

    def figures(self, cores: int) -> dict[str, float]:
        """From the decoders' start to the last row: images/s (every image decoded and scored
        in that span, none before), and the shares of cores x wall the scoring process, its
        decoders and everything else took (the rest idled). The decoders are the children
        that took a second of CPU or more (not a helper started for a moment)."""
        s, starts = self.samples, [c[0] for c in self.children.values() if c[1] >= 1.0]
        if not starts or not s or not s[-1][4]:
            return {}
        a, b = s[min(starts)], next(x for x in s if x[4] == s[-1][4])
        capacity = cores * (b[0] - a[0])
        main, kids, busy = b[1] - a[1], b[2] - a[2], b[3] - a[3]
        return dict(
            rate=b[4] / (b[0] - a[0]), main=main / capacity, decoders=kids / capacity,
            others=max(0.0, busy - main - kids) / capacity,
        )  # fmt: skip


def score(work: Path, dicoms: Path, sidecar: Path, size: int, extra: list[str]) -> dict:
    """One `ptxfast score` run; its JSON summary with the load average and core shares."""
    out = work / f"run{size}"
    out.mkdir(exist_ok=True)
    for old in out.glob("p.csv*"):
        old.unlink()
    load0 = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "ptxfast", "score", str(dicoms), "--out", str(out / "p.csv"),
           "--model", str(sidecar), "--device", "cpu", "--json", str(out / "s.json"), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    sampler = CoreSampler(proc, out / "p.csv")
    sampler.start()
    if proc.wait() != 0:
        raise SystemExit(f"ptxfast score failed (exit {proc.returncode}): {' '.join(cmd)}")
    sampler.join()
    s = json.loads((out / "s.json").read_text())
    s["bench"] = dict(load=(load0, os.getloadavg()[0]), cores=sampler.figures(s["cores"] or 1))
    return s


def _row(size: int, s: dict) -> str:
    sizing = s["decoding"].get("sizing") or {}
    wall = 1000 * s["time_s"]["decode"] / (s["scored"] + s["failed"])
    d = 1000 * s["decode_cpu_s_per_image"]
    sized = f" (sized: D {sizing['decode_ms']:.0f} ms vs C {sizing['compute_ms']:.1f} ms)"
    m, bound, c = (
        s["model_only_images_per_s"],
        s["shared_core_bound_images_per_s"],
        s["bench"]["cores"],
    )
    rate = s["steady_images_per_s"] or s["images_per_s"]
    shares = left = "not sampled"
    if c:
        idle = max(0.0, 1 - c["main"] - c["decoders"] - c["others"])
        shares = f"{c['main']:.0%} / {c['decoders']:.0%} / {c['others']:.0%} / {idle:.0%}"
        # The same bound on the cores the machine's other processes left to the run.
        left_over = shared_core_bound(m, d / 1000, s["cores"] * (1 - c["others"]), c["rate"])
        cut = left_over.shared_core_bound_images_per_s
        left = f"{c['rate']:.1f} / {cut:.1f} = {left_over.bound_share:.0%}"
    load, others = s["bench"]["load"], s.get("others_cpu_share")
    others = "not measured" if others is None else f"{others:.0%}"
    return (
        f"| {size}² | {s['workers']}{sized if sizing else ''} | {d:.1f} | {m:.1f} | {bound:.1f} | "
        f"{rate:.1f} | {rate / bound:.0%} | {wall:.0f} vs {d:.0f} | {others} | {shares} | {left} | "
        f"{load[0]:.1f} → {load[1]:.1f} |"
    )


HEADER = (
    "| artifact | decoders | D (CPU ms / file) | model only M (images/s) | bound 1/(1/M + D/c) "
    "| end to end (images/s) | end to end / bound | decoders' wall vs CPU ms / file "
    "| other processes' share of the cores (summary) "
    "| decoders' start to last row: cores, scorer / decoders / others / idle "
    "| there: images/s / bound on the cores others left = share | load average |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="data and artifacts, kept")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--unique", type=int, default=20, help="radiographs made")
    parser.add_argument("--copies", type=int, default=10, help="files per radiograph")
    parser.add_argument("--repeat", type=int, default=1, help="score runs per artifact")
    parser.add_argument("score_args", nargs="*", help="passed to ptxfast score (after --)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    dicoms = make_dicoms(work / "dicoms", args.unique, args.copies)
    sidecars = {size: make_artifact(work, size) for size in args.sizes}
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{len(list(dicoms.glob('*.dcm')))} files, {os.cpu_count()} CPUs\n\n{HEADER}", flush=True)  # fmt: skip
    for _ in range(args.repeat):
        for size, sidecar in sidecars.items():
            print(_row(size, score(work, dicoms, sidecar, size, args.score_args)), flush=True)


if __name__ == "__main__":
    main()
