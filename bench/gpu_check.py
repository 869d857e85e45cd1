"""Helpers of bench/gpu_check.sh: random-init checkpoints, the environment, and the summary.

    python bench/gpu_check.py checkpoints RUNS --size 512      # runs/<name>/best.pt, training's format
    python bench/gpu_check.py env OUT/check.json --device cuda  # versions, GPU, what can run
    python bench/gpu_check.py summary OUT WORK                  # OUT/summary.md + OUT/check.json

`summary` reads only JSON and markdown (no torch import), so the shell script can rebuild it
after every stage: a check cut short still leaves a readable summary of what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

CHECKPOINT_NAMES = ("eb3un+eb3", "rn34un+rn34")


# --------------------------------------------------------------------------------- checkpoints


def write_checkpoints(runs: Path, names: list[str], size: int, seed: int = 0) -> list[Path]:
    """RUNS/<name>/best.pt at random init in the format training writes (a cascade over its
    segmenter's, written first)."""
    from ptxfast.training import write_untrained

    written = []
    for name in names:
        written.append(
            write_untrained(runs, name, size, seed=seed, note="random init for the GPU check")
        )
        print(f"wrote {written[-1]}", flush=True)
    return written


# --------------------------------------------------------------------------------- environment


def environment(device: str) -> dict[str, Any]:
    """Versions, the device, and which backends can run there (with the reasons)."""
    import torch

    from ptxfast.environment import resolve_device, versions
    from ptxfast.inference import runtime, trt

    dev = resolve_device(device)
    env = versions(dev)
    env["backends"] = runtime.available_backends(dev)
    env["tensorrt_reason"] = trt.unavailable_reason(dev)
    env["cuda_available"] = torch.cuda.is_available()
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["sm"] = f"{props.major}.{props.minor}"
    from importlib import metadata

    for dist in ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = None
    return env


# ------------------------------------------------------------------------------------- summary


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stages(work: Path) -> list[dict[str, Any]]:
    rows = []
    path = work / "stages.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 4:
                name, rc, secs, limit = parts
                status = {
                    "0": "ok",
                    "124": "timed out",
                    "137": "killed (timeout)",
                    "stopped": "stopped before bench (its caches stay)",
                }.get(rc, "skipped" if rc == "skipped" else f"failed (rc {rc})")
                rows.append(
                    {"stage": name, "status": status, "seconds": int(secs), "timeout": int(limit)}
                )
    return rows


def _exports(work: Path) -> list[dict[str, Any]]:
    out = []
    for side in sorted((work / "exports").glob("*.json")):
        s = _read_json(side)
        if not isinstance(s, dict) or "parity" not in s:
            continue
        p = s["parity"]
        out.append(
            {
                "sidecar": side.name,
                "name": s.get("name"),
                "backend": s.get("backend"),
                "path": s.get("path"),
                "precision": (s.get("precision") or {}).get("requested"),
                "precision_measured": (s.get("precision") or {}).get("actual"),
                "size": (s.get("input") or {}).get("size"),
                "device": s.get("device"),
                "sha256": s.get("sha256"),
                "parity": {
                    k: p.get(k)
                    for k in (
                        "source",
                        "n",
                        "agreement",
                        "delta_f1",
                        "delta_recall",
                        "delta_auc",
                        "delta_dice",
                        "max_abs_diff",
                        "passed",
                        "tolerance",
                    )
                },  # fmt: skip
                "versions": s.get("versions"),
            }
        )
    return out


def _f(v: Any, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _demote(md: str) -> str:
    """A bench markdown file as a section: its headings one level down."""
    return "\n".join("#" + line if line.startswith("#") else line for line in md.splitlines())


def _score_lines(score: Any, how: str) -> list[str]:
    """The summary's section on one `ptxfast score --json` result (nothing without one)."""
    if not isinstance(score, dict):
        return []
    t = score.get("time_s") or {}
    lat = score.get("latency_ms") or {}
    gpu = score.get("gpu") or {}
    lines = [
        f"## Scoring a DICOM folder end to end (`ptxfast score`{how})",
        "",
        f"- {score.get('model')} ({score.get('backend')} {score.get('precision')}) on "
        f"{score.get('device')}, batch {score.get('batch_size')}, {score.get('workers')} "
        f"decoding worker(s): {score.get('scored')} scored, {score.get('failed')} failed of "
        f"{score.get('files')} files",
        f"- end to end {_f(score.get('images_per_s'), '.1f')} images/s (steady "
        f"{_f(score.get('steady_images_per_s'), '.1f')}); model only "
        f"{_f(score.get('model_only_images_per_s'), '.1f')} images/s; ratio "
        f"{_f(score.get('ratio'), '.2f')}",
        f"- batch latency p50/p95/p99 {_f(lat.get('p50'), '.1f')}/{_f(lat.get('p95'), '.1f')}/"
        f"{_f(lat.get('p99'), '.1f')} ms; seconds: setup {_f(score.get('setup_seconds'), '.1f')}, "
        + ", ".join(f"{k} {v:.2f}" for k, v in t.items()),
        f"- GPU utilisation {_f(gpu.get('util_mean'), '.0f')}% mean, power "
        f"{_f(gpu.get('power_mean_w'), '.0f')} W mean",
    ]
    outputs = {k: score.get(k) for k in ("masks_written", "segs_written") if k in score}
    if any(outputs.values()) or score.get("output_errors"):
        errors = score.get("output_errors") or []
        lines.append(
            "- outputs: "
            + ", ".join(f"{k} {v}" for k, v in outputs.items())
            + f"; {len(errors)} output error(s)"
            + (f", first: {errors[0]}" if errors else "")
        )
    return lines + [""]


def _gpu_tests(xml: Path) -> list[str]:
    """The GPU-marked tests' counts from pytest's JUnit XML, and the ones that failed."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return []
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    lines = [
        "## GPU tests (`pytest -m gpu`)",
        "",
        f"- {passed} passed, {total['failures']} failed, {total['errors']} errors, "
        f"{total['skipped']} skipped of {total['tests']}",
    ]
    for case in root.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            message = (bad.get("message") or "").splitlines()[0][:200] if bad.get("message") else ""
            lines.append(f"- FAILED {case.get('classname')}::{case.get('name')}: {message}")
    return lines + [""]


def summarize(out: Path, work: Path) -> str:
    """Write OUT/check.json (environment, stages, exports) and OUT/summary.md; return the md."""
    check = _read_json(out / "check.json") or {}
    env = check.get("environment") or {}
    check["stages"] = _stages(work)
    check["exports"] = _exports(work)
    smi = work / "nvidia-smi.txt"
    if smi.is_file():
        check["nvidia_smi"] = smi.read_text().strip().splitlines()
    from ptxfast.files import write_json  # numpy only: no torch import here

    write_json(out / "check.json", check)

    device = env.get("gpu") or env.get("cpu") or "unknown device"
    lines = [f"# ptxfast GPU check: {device}", ""]
    if env:
        lines.append(
            f"- date: {env.get('date')}; ptxfast {env.get('ptxfast')}, torch {env.get('torch')}, "
            f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, driver {env.get('driver')}, "
            f"python {env.get('python')}, timm {env.get('timm')}, "
            f"smp {env.get('segmentation_models_pytorch')}, pydicom {env.get('pydicom')}"
        )
        lines.append(
            f"- {env.get('cpus')} CPU cores ({env.get('cpu')}); GPU memory "
            f"{env.get('gpu_memory_gib')} GiB; load {env.get('load_before')}"
        )
        trt = env.get("tensorrt_reason")
        lines.append(f"- tensorrt: {'available' if trt is None else 'unavailable — ' + trt}")
        backends = env.get("backends") or {}
        off = [f"{k} ({v})" for k, v in backends.items() if v]
        if off:
            lines.append(f"- backends that cannot run here: {'; '.join(off)}")
    for line in check.get("nvidia_smi") or []:
        lines.append(f"- nvidia-smi: {line}")
    lines += ["", "## Stages", "", "| stage | status | seconds | timeout |", "|---|---|---|---|"]
    for s in check["stages"]:
        lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['timeout']} |")
    lines.append("")

    for md_name in (
        "bench-eb3.md", "bench-inductor.md", "bench-inductor-ro.md", "bench-rn34.md",
        "decode-gpu.md",
    ):  # fmt: skip
        md = work / md_name
        if md.is_file():
            lines += [_demote(md.read_text()), ""]

    if check["exports"]:
        lines += [
            "## Exports (random-init weights: the parity gate is measured, its tolerance opened)",
            "",
            "| artifact | backend | precision (measured) | size | agreement | ΔF1 | max Δprob |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in check["exports"]:
            p = e["parity"]
            lines.append(
                f"| {e['sidecar']} | {e['backend']} ({e['path']}) | {e['precision']} "
                f"({e['precision_measured']}) | {e['size']} | {_f(p.get('agreement'), '.2%')} | "
                f"{_f(p.get('delta_f1'), '+.3f')} | {_f(p.get('max_abs_diff'), '.2g')} |"
            )
        lines.append("")

    lines += _score_lines(_read_json(out / "score.json"), "")
    lines += _score_lines(_read_json(work / "score-outputs.json"), " with --masks and --dicom-seg")
    lines += _gpu_tests(work / "gputests.xml")

    train = _read_json(out / "train.json")
    if isinstance(train, dict) and train.get("rows"):
        lines += [
            "## Training throughput (bench/train_bench.py: paper fp32 vs fast AMP + channels_last)",
            "",
            "| arch | mode | precision | size | batch | images/s | step ms (median) | peak MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in train["rows"]:
            lines.append(
                f"| {r['arch']} | {r['mode']} | {r['precision']} | {r['size']} | {r['batch']} | "
                f"{r['images_per_s']:.1f} | {r['step_ms_median']:.1f} | "
                f"{_f(r.get('peak_memory_mib'), '.0f')} |"
            )
        lines.append("")
    text = "\n".join(lines).rstrip() + "\n"
    (out / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("checkpoints", help="random-init checkpoints in training's format")
    c.add_argument("runs", type=Path)
    c.add_argument("--size", type=int, default=512)
    c.add_argument("--names", default=",".join(CHECKPOINT_NAMES))
    e = sub.add_parser("env", help="versions and devices into a JSON file")
    e.add_argument("out", type=Path)
    e.add_argument("--device", default="auto")
    s = sub.add_parser("summary", help="OUT/summary.md and OUT/check.json from what is there")
    s.add_argument("out", type=Path)
    s.add_argument("work", type=Path)
    args = parser.parse_args(argv)
    if args.command == "checkpoints":
        names = [n.strip() for n in args.names.split(",") if n.strip()]
        write_checkpoints(args.runs, names, args.size)
    elif args.command == "env":
        env = environment(args.device)
        doc = _read_json(args.out) or {}
        doc["environment"] = env
        from ptxfast.files import write_json

        write_json(args.out, doc)
        print(json.dumps(env, indent=1))
    else:
        summarize(args.out, args.work)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parent.parent))  # the repo root
    sys.exit(main())
