"""How `ptxfast evaluate` shows an `EvalReport` in a terminal: the test figures at the paper's
(and tuned) cut-offs, the operating points with their 95% CIs and calibration, and the files
written."""

from __future__ import annotations

import math
from typing import Any

from ptxfast.evaluation.results import EvalReport

__all__ = ["files_line", "metrics_table", "operating_point_table"]


def _fmt(v: Any, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _title(report: EvalReport) -> str:
    """Size and test-set counts go in the title when every model shares them (the usual case),
    so the table fits an 80-column log; specificity and Dice over all images are in the files."""
    sizes = {r.size for r in report.results}
    counts = {(r.metrics["n"], r.metrics["n_pos"]) for r in report.results}
    title = "test split"
    if len(counts) == 1:
        n, n_pos = counts.pop()
        title += f": {n} images ({n_pos} with pneumothorax)"
    if len(sizes) == 1:
        title += f" at {next(iter(sizes))}²"
    return title


def metrics_table(report: EvalReport):
    """The rich table of every model at the paper's cut-offs (and tuned ones), by kind."""
    from rich import box
    from rich.table import Table

    title = _title(report)
    table = Table(
        title=title,
        caption="tuned: cut-offs chosen on the validation split"
        if any(r.tuned for r in report.results)
        else None,
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
    )
    columns = ("model", "cut-off") + (("n (pos)",) if "images" not in title else ())
    columns += ("F1", "recall", "prec.", "AUC", "TN FP FN TP", "Dice+")
    for name in columns:
        left = name in ("model", "cut-off")
        table.add_column(name, justify="left" if left else "right", no_wrap=True)

    def row(name: str, cut: str, m: dict, style: str | None = None) -> None:
        n = (f"{m['n']} ({m['n_pos']})",) if "n (pos)" in columns else ()
        table.add_row(
            name,
            cut,
            *n,
            *(_fmt(m[k]) for k in ("f1", "recall", "precision", "auc")),
            f"{m['tn']} {m['fp']} {m['fn']} {m['tp']}",
            _fmt(m["dice_pos"]),
            style=style,
        )

    sizes = {r.size for r in report.results}
    kind = None
    for r in report.results:
        if kind is not None and r.kind != kind:
            table.add_section()
        kind, c = r.kind, r.cutoffs
        size = f" @{r.size}" if len(sizes) > 1 else ""
        if r.kind == "segmenter":
            cut = f"p>{c['pixel_threshold']:g} >{c['min_area']}px"
        else:
            cut = f"p>{c['threshold']:g}"
        row(f"{r.name}{size}", cut, r.metrics)
        if r.tuned:
            t = r.tuned
            row("  tuned", f"p>{t['pixel_threshold']:g} >{t['min_area']}px", t["metrics"], "italic")
    if report.missing:
        table.add_section()
        for name in report.missing:
            table.add_row(name, "not trained", *[""] * (len(columns) - 2), style="dim")
    return table


def operating_point_table(report: EvalReport):
    """Test figures with 95% CIs at the thresholds chosen on validation, and calibration."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="operating points: threshold chosen on validation, figures on test [95% CI]",
        caption=f"CIs: stratified bootstrap, {report.n_boot} resamples; T: temperature fitted on "
        "validation, ECE on test before → after",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
    )
    columns = ("model", "target", "thr.", "sensitivity", "specificity", "PPV", "NPV", "F1", "AUC")
    for name in columns:
        table.add_column(name, justify="left" if name == "model" else "right")
    table.add_column("T / ECE", justify="right")

    def ci(c: dict) -> str:
        return f"{_fmt(c['value'], 2)} [{_fmt(c['lo'], 2)}, {_fmt(c['hi'], 2)}]"

    for r in report.results:
        cal = r.calibration
        t_ece = (
            f"{cal['temperature']:.2f} / {cal['ece_test_before']:.2f}→{cal['ece_test_after']:.2f}"
            if cal
            else "—"
        )
        for i, op in enumerate(r.operating_points):
            c = op["ci"]
            table.add_row(
                r.name if i == 0 else "",
                f"≥{op['target_recall']:g}" + ("" if op["reached"] else " (!)"),
                f"{op['threshold']:.3g}",
                *(ci(c[k]) for k in ("recall", "specificity", "precision", "npv", "f1")),
                ci(c["auc"]) if i == 0 else "",
                t_ece if i == 0 else "",
            )
    return table


def files_line(report: EvalReport) -> str:
    """One line: how many files went where, in how long, and their names."""
    return (
        f"wrote {len(report.files)} files to {report.out} in {report.seconds:.1f} s: "
        + ", ".join(sorted({p.name for p in report.files.values()}))
    )
