"""The tables `ptxfast export` prints: the artifact made, its parity figures, the CPU choice.

`result_tables(result)` draws an `ExportResult`; `figures_table(figures)` the gate's figures
(also shown with a ParityError's refusal); `selection_table(selection)` the CPU default
choice, each candidate's speed and gate with the chosen one marked.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ptxfast.export.config import ExportResult
from ptxfast.inference.operating import describe


def _two_columns(title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column(justify="right", style="bold")
    table.add_column()
    return table


def figures_table(parity: dict[str, Any]) -> Table:
    """The parity figures against eager fp32 (`metrics.parity` keys) and the tolerance."""
    table = _two_columns("parity against eager fp32")
    table.add_row(
        "data",
        f"{parity.get('source')} ({parity.get('n')} images, {parity.get('n_pos')} positive)",
    )
    table.add_row("label agreement", f"{parity['agreement']:.2%}")
    for key, what in (("f1", "F1"), ("recall", "recall"), ("auc", "ROC-AUC"), ("dice", "Dice")):
        if parity.get(key) is not None and parity.get(f"{key}_ref") is not None:
            table.add_row(
                f"{what} eager → artifact",
                f"{parity[f'{key}_ref']:.4f} → {parity[key]:.4f} "
                f"(Δ {parity[key] - parity[f'{key}_ref']:+.4f})",
            )
    table.add_row(
        "max |Δprob|", f"{parity['max_abs_diff']:.3g} (mean {parity['mean_abs_diff']:.2g})"
    )
    if parity.get("max_abs_delta_area") is not None:
        table.add_row("max |Δarea|", f"{parity['max_abs_delta_area']} px")
    tol = parity.get("tolerance", {})
    table.add_row("tolerance", ", ".join(f"{k} {v:g}" for k, v in tol.items() if v is not None))
    return table


def selection_table(selection: dict[str, Any]) -> Table:
    """The CPU default choice: each candidate's speed and gate, the chosen one marked."""
    table = Table(title=f"CPU candidates ({selection['how']})")
    for col in ("backend", "precision", "images/s", "max |Δprob|", "agreement", "gate"):
        table.add_column(col, justify="right" if col in ("images/s", "max |Δprob|") else "left")
    for c in selection["candidates"]:
        gate = "passed" if c["passed"] else "failed: " + "; ".join(c["failed"])
        table.add_row(
            ("→ " if c["chosen"] else "") + c["backend"],
            c["precision"],
            f"{c['images_per_s']:.1f}" if c["images_per_s"] else "—",
            f"{c['max_abs_diff']:.2g}" if c["max_abs_diff"] is not None else "—",
            f"{c['agreement']:.2%}" if c["agreement"] is not None else "—",
            gate,
        )
    return table


def result_tables(result: ExportResult) -> list[Table]:
    """What an export made (files, backend, precision, input, label rule, operating point),
    its parity figures and, for a CPU default choice, the candidates."""
    s = result.sidecar
    table = _two_columns(f"exported {s['name']}")
    table.add_row("artifact", str(result.model_path))
    table.add_row("sidecar", str(result.sidecar_path))
    table.add_row("backend", f"{s['backend']} ({s['path']}) on {s['device']}")
    prec = s["precision"]
    table.add_row(
        "precision", f"{prec['requested']} requested, {prec['actual']} measured ({prec['source']})"
    )
    size, b = s["input"]["size"], s["batch"]
    table.add_row(
        "input",
        f"N×1×{size}×{size} {s['input']['dtype']}, batch {b['min']}:{b['opt']}:{b['max']}",
    )
    th = s["thresholds"]
    rule = f"prob > {th['label']}" + (
        f"; area = pixels > {th['pixel']}" if th["pixel"] is not None else ""
    )
    table.add_row("label rule", rule + ("; returns the mask" if s["return_mask"] else ""))
    table.add_row("operating point", describe(s))
    if s.get("tta", "none") != "none":
        table.add_row("test-time aug.", f"{s['tta']}: the image and its mirror, averaged")
    table.add_row("sha256", s["sha256"])
    for config in result.triton:
        table.add_row(
            "triton", f"{config.parent} (tritonserver --model-repository {config.parent.parent})"
        )
    table.add_row("time", f"{result.seconds:.1f} s")
    tables = [table, figures_table(s["parity"])]
    if s.get("selection"):
        tables.append(selection_table(s["selection"]))
    return tables
