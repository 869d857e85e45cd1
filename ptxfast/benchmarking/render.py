"""Drawing a benchmark report: the cells of its throughput, parity and stage tables (one set,
for the terminal and for markdown alike), the markdown file, the terminal tables, and the
throughput / latency plots against batch size."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptxfast.benchmarking.config import BenchError

__all__ = [
    "PARITY_HEADER",
    "PLOT_FILES",
    "STAGE_HEADER",
    "THROUGHPUT_HEADER",
    "not_measured",
    "agreement_cells",
    "agreement_table",
    "print_report",
    "stage_cells",
    "throughput_cells",
    "throughput_table",
    "title",
    "to_markdown",
    "write_plots",
]


def _f(v: Any, fmt: str = ".1f", dash: str = "—") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return dash
    return format(v, fmt)


def _ms(v: float) -> str:
    """Milliseconds with three significant figures or so."""
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def throughput_cells(row: dict[str, Any]) -> list[str]:
    """The cells of one row in the throughput table (rich and markdown show the same)."""
    if row["status"] != "ok":
        return [row["variant"], _f(row["batch"], "d"), row["status"], *[""] * 7]
    return [
        row["variant"],
        str(row["batch"]),
        f"{row['images_per_s']:.1f} ± {row['images_per_s_std']:.1f}",
        "/".join(_ms(row[f"latency_ms_p{q}"]) for q in (50, 90, 99)),
        _ms(row["image_ms_p50"]),
        _f(row["peak_memory_mib"], ".0f"),
        _f(row["gpu_util_mean"], ".0f"),
        _f(row["power_mean_w"], ".0f"),
        _f(row["energy_j_per_image"], ".3f"),
        _f(row["speedup_vs_eager"], ".2f") + ("×" if row["speedup_vs_eager"] else ""),
    ]


THROUGHPUT_HEADER = (
    "variant", "batch", "images/s ± std", "ms/batch p50/p90/p99", "ms/image p50",
    "peak MiB", "GPU %", "W", "J/image", "vs eager",
)  # fmt: skip
PARITY_HEADER = (
    "variant",
    "agreement",
    "F1 (eager → this)",
    "recall (eager → this)",
    "max |Δprob|",
)
STAGE_HEADER = ("variant", "batch", "decode", "host→device", "compute", "device→host", "bound")


def agreement_cells(p: dict[str, Any]) -> list[str]:
    """The cells of one parity row."""
    if p["status"] != "ok":
        return [p["variant"], p["status"], "", "", ""]
    return [
        p["variant"],
        f"{p['agreement']:.2%} ({p['n_disagree']} of {p['n']} differ)",
        f"{p['f1_ref']:.3f} → {p['f1']:.3f} (Δ {p['delta_f1']:+.3f})",
        f"{p['recall_ref']:.3f} → {p['recall']:.3f} (Δ {p['delta_recall']:+.3f})",
        f"{p['max_abs_diff']:.2g}",
    ]


def stage_cells(s: dict[str, Any]) -> list[str]:
    """The cells of one stage row: ms per image (images/s that stage alone allows)."""
    if s["status"] != "ok":
        return [s["variant"], "", s["status"], "", "", "", s.get("error") or ""]

    def cell(stage: str) -> str:
        ms = s[f"{stage}_ms_per_image"]
        if ms is None:
            return "n/a"
        return f"{ms:.2f} ms ({s[f'{stage}_images_per_s']:.0f}/s)"

    decode = cell("decode")
    if s["decode_ms_per_image"] is not None and s["decode_workers"] > 1:
        decode += f" ×{s['decode_workers']} proc"
    bound = f"{s['bound']} ({_f(s['bound_images_per_s'], '.0f')}/s)" if s["bound"] else "—"
    return [s["variant"], str(s["batch"]), decode, cell("h2d"), cell("compute"), cell("d2h"), bound]


def throughput_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the rows that have a batch size, without the columns no row fills
    (GPU telemetry on a CPU, say)."""
    cells = [throughput_cells(r) for r in rows if r["batch"] is not None]
    keep = [
        i
        for i in range(len(THROUGHPUT_HEADER))
        if i < 3 or any(c[i] not in ("", "—") for c in cells)
    ]
    return [THROUGHPUT_HEADER[i] for i in keep], [[c[i] for i in keep] for c in cells]


def title(report: dict[str, Any]) -> str:
    """One line: model, size, device, and the load where the figures were taken."""
    env, m = report["environment"], report["model"]
    threads = env.get("torch_threads")
    where = env.get("gpu") or f"{env.get('cpu') or 'CPU'}, {threads} thread{'s' * (threads != 1)}"
    load = env.get("load_before")
    load_txt = f", load {load[0]:.2f}" if load else ""
    if env.get("load_after"):
        load_txt += f" → {env['load_after'][0]:.2f}"
    return f"{m['name']} ({m['weights']}) at {m['size']}² on {env['device']}: {where}{load_txt}"


def _md_table(header: Sequence[str], rows: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def not_measured(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(variant, " (batch N)" or "", "status — reason") of each row that was not measured."""
    out = []
    for r in rows:
        if r["status"] != "ok":
            where = f" (batch {r['batch']})" if r["batch"] is not None else ""
            out.append((r["variant"], where, f"{r['status']} — {r['error']}"))
    return out


def agreement_table(report: dict[str, Any]) -> list[list[str]] | None:
    """The parity table's cells, None when no variant's parity was measured."""
    if not any(p["status"] == "ok" for p in report["parity"]):
        return None
    return [agreement_cells(p) for p in report["parity"] if p["status"] in ("ok", "failed")]


def _parity_set(data: dict[str, Any]) -> str:
    return f"{data.get('source')} ({data.get('n')} images, {data.get('n_pos')} positive)"


def _setup_lines(report: dict[str, Any]) -> list[str]:
    """The markdown's list of what was measured with, and how."""
    env, cfg, data = report["environment"], report["config"], report.get("data") or {}
    versions = ", ".join(
        f"{k} {env[k]}"
        for k in ("torch", "timm", "segmentation_models_pytorch", "torch_tensorrt", "tensorrt",
                  "cuda", "cudnn", "driver", "python")
        if env.get(k)
    )  # fmt: skip
    out = [f"- date: {env.get('date')}; {versions}"]
    out.append(
        f"- timing: warm-up {cfg['warmup']}, then {cfg['repeats']} × {cfg['iters']} timed "
        "calls per batch size, device-synchronised, inputs on the device (rotated among "
        f"{cfg['input_buffers']}); ± is the std of images/s across repeats"
    )
    if env.get("gpu") and env.get("cudnn_allow_tf32"):
        out.append(
            "- fp32 convolutions are timed as torch runs them by default, in TF32 "
            "(cudnn.allow_tf32); parity runs with TF32 off"
        )
    if data:
        out.append(f"- parity set: {_parity_set(data)}")
        if data.get("stage_files"):
            out.append(f"- stages: {data['stage_files']}")
    return out


def to_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: environment, throughput, what did not run, parity, stages."""
    out = [f"# ptxfast bench: {title(report)}\n"]
    if not report.get("complete"):
        out.append("_Partial: the run had not finished when this was written._\n")
    out += [*_setup_lines(report), ""]
    out.append("## Throughput and latency\n")
    out.append(_md_table(*throughput_table(report["rows"])))
    missing = not_measured(report["rows"])
    if missing:
        out.append("## Not measured\n")
        out += [f"- **{variant}**{where}: {why}" for variant, where, why in missing]
        out.append("")
    parity = agreement_table(report)
    if parity is not None:
        out.append("## Parity against eager fp32\n")
        out.append(_md_table(PARITY_HEADER, parity))
    if report["stages"]:
        out.append(
            "## Stages of scoring (ms per image, and the images/s that stage alone allows)\n"
        )
        out.append(_md_table(STAGE_HEADER, [stage_cells(s) for s in report["stages"]]))
    for note in report.get("notes") or []:
        out.append(f"- note: {note}")
    return "\n".join(out).rstrip() + "\n"


def _rich_table(caption: str, header: Sequence[str], rows: list[list[str]]):
    from rich.table import Table

    table = Table(title=caption)
    for col in header:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for cells in rows:
        table.add_row(*cells)
    return table


def print_report(
    report: dict[str, Any],
    out,
    log,
    plots_dir: Path | None = None,
    written: Sequence[Path | None] = (),
) -> None:
    """The report in the terminal: its tables on `out`, what did not run and the notes on `log`
    (rich consoles); with `plots_dir`, the plots written there; last, the seconds it took and
    the files `written` (None entries skipped) and plotted."""
    out.print(_rich_table(title(report), *throughput_table(report["rows"])))
    for variant, where, why in not_measured(report["rows"]):
        log.print(f"[yellow]{variant}{where}:[/] {why}")
    parity = agreement_table(report)
    if parity is not None:
        caption = f"parity against eager fp32 on {_parity_set(report['data'])}"
        out.print(_rich_table(caption, PARITY_HEADER, parity))
    if report["stages"]:
        caption = (
            "stages of scoring: ms per image (images/s that stage alone allows); "
            f"{report['data'].get('stage_files')}"
        )
        out.print(_rich_table(caption, STAGE_HEADER, [stage_cells(s) for s in report["stages"]]))
    for note in report["notes"]:
        log.print(f"note: {note}", highlight=False)
    files = [str(p) for p in written if p]
    if plots_dir is not None:
        try:
            files += [str(p) for p in write_plots(report, plots_dir)]
        except BenchError as e:
            log.print(f"[yellow]no plots:[/] {e}", highlight=False)
    done = f"{report['seconds']:.0f} s" + (f"; wrote {', '.join(files)}" if files else "")
    log.print(done, highlight=False)


PLOT_FILES = ("throughput.png", "latency.png")


def write_plots(report: dict[str, Any], folder: str | os.PathLike) -> list[Path]:
    """`throughput.png` (images/s against batch size, one line per variant) and `latency.png`
    (p50 and p99 ms per batch against batch size) of a report's measured rows, in `folder`.

    Raises BenchError when no row was measured (nothing to draw)."""
    from ptxfast import plots

    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in report["rows"]:
        if r["status"] == "ok" and r.get("images_per_s"):
            by_variant.setdefault(r["variant"], []).append(r)
    if not by_variant:
        raise BenchError("no backend was measured, so there is nothing to plot")
    series = []
    for variant, rows in by_variant.items():
        rows = sorted(rows, key=lambda r: r["batch"])
        series.append(
            plots.BatchSeries(
                name=variant,
                batches=[r["batch"] for r in rows],
                images_per_s=[r["images_per_s"] for r in rows],
                images_per_s_std=[r.get("images_per_s_std") or 0.0 for r in rows],
                latency_p50_ms=[r["latency_ms_p50"] for r in rows],
                latency_p99_ms=[r["latency_ms_p99"] for r in rows],
            )
        )
    folder = Path(folder)
    where = title(report)
    return [
        plots.throughput_by_batch(series, folder / PLOT_FILES[0], where),
        plots.latency_by_batch(series, folder / PLOT_FILES[1], where),
    ]
