"""Writing an evaluation: metrics.json (every figure, strict JSON), metrics.csv (one row per
model and cut-off), index.html (the table and the figures as one page), and what goes into the
evaluation.json beside each checkpoint (validation-chosen operating points and temperature)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptxfast import metrics as M
from ptxfast.evaluation.results import (
    CSV_COLUMNS,
    EvalReport,
    ModelResult,
    operating_point_name,
)
from ptxfast.files import atomic_write, json_clean, write_json

__all__ = ["evaluation_results", "write_csv", "write_index", "write_metrics_json"]


def write_metrics_json(report: EvalReport, path: Path) -> Path:
    """metrics.json: every figure of every model, the CIs and the files, as strict JSON."""
    from ptxfast import __version__

    doc = {
        "ptxfast": __version__,
        "runs": report.runs,
        "split": "test",
        "device": report.device,
        "models": {
            r.name: {
                "kind": r.kind,
                "checkpoint": r.checkpoint,
                "sha256": r.sha256,
                "epoch": r.epoch,
                "size": r.size,
                "data": r.data,
                "cutoffs": r.cutoffs,
                "metrics": r.metrics,
                "ci": r.ci,
                "tuned": r.tuned,
                "operating_points": r.operating_points,
                "calibration": r.calibration,
                "notes": r.notes,
                "files": r.files,
            }
            for r in report.results
        },
        "missing": report.missing,
        "bootstrap": {"resamples": report.n_boot, "seed": 0, "level": 0.95, "stratified": True},
        "files": {**report.files, "metrics_json": path},
    }
    return write_json(path, doc)


def _ci_columns(ci: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{k}_{end}": ci[k][end] for k in M.CI_METRICS for end in ("lo", "hi")}


def _csv_rows(result: ModelResult) -> list[dict[str, Any]]:
    base = {
        "model": result.name,
        "kind": result.kind,
        "size": result.size,
        "checkpoint": result.checkpoint,
        "temperature": (result.calibration or {}).get("temperature", ""),
    }
    min_area_paper = result.cutoffs.get("min_area", "")
    rows = [
        {
            **base,
            "cutoffs": "paper",
            "threshold": result.cutoffs.get("threshold", result.cutoffs.get("pixel_threshold")),
            "min_area": min_area_paper,
            **result.metrics,
            **_ci_columns(result.ci),
        }
    ]
    if result.tuned:
        t = result.tuned
        rows.append(
            {
                **base,
                "cutoffs": "tuned",
                "threshold": t["pixel_threshold"],
                "min_area": t["min_area"],
                **t["metrics"],
                **_ci_columns(t["ci"]),
            }
        )
    for op in result.operating_points:
        rows.append(
            {
                **base,
                "cutoffs": operating_point_name(op["target_recall"]),
                "threshold": op["threshold"],
                "min_area": min_area_paper,
                "target_recall": op["target_recall"],
                "val_recall": op["val"]["recall"]["value"],
                "val_specificity": op["val"]["specificity"]["value"],
                **op["metrics"],
                **_ci_columns(op["ci"]),
            }
        )
    return rows


def evaluation_results(result: ModelResult, n_boot: int) -> dict[str, Any]:
    """What evaluation learnt about one checkpoint on validation data, for evaluation.json:
    the operating points (validation figures only: the test split is for reporting) and the
    temperature. `ptxfast export --operating-point` reads it."""
    from ptxfast import __version__

    def val_only(op: dict[str, Any]) -> dict[str, Any]:
        keep = ("target_recall", "threshold", "chosen_on", "reached", "note")
        return {
            **{k: op[k] for k in keep},
            "score": "k-th largest pixel probability" if result.kind == "segmenter" else "p",
            "val": op["val"],
        }

    return json_clean(
        {
            "ptxfast": __version__,
            "model": result.name,
            "kind": result.kind,
            "size": result.size,
            "epoch": result.epoch,
            "data": result.data,
            "bootstrap": {"resamples": n_boot, "seed": 0, "level": 0.95, "stratified": True},
            "operating_points": [val_only(op) for op in result.operating_points],
            "calibration": result.calibration,
            "notes": result.notes,
        }
    )


def write_csv(results: Sequence[ModelResult], path: Path) -> Path:
    """metrics.csv: one row per model and cut-off (paper, tuned, each operating point)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for r in results:
                for row in _csv_rows(r):
                    writer.writerow(
                        {
                            k: ("" if isinstance(v, float) and math.isnan(v) else v)
                            for k, v in json_clean(row).items()
                            if k in CSV_COLUMNS
                        }
                    )

    return atomic_write(path, write)


def _cell(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _index_table(report: EvalReport) -> str:
    """The HTML table of index.html: the paper's cut-offs and any tuned ones, per model."""
    from ptxfast.pages import esc

    def row(r: ModelResult, m: dict[str, float], note: str = "") -> str:
        values = [m["f1"], m["recall"], m["precision"], m["auc"], m["dice_pos"]]
        return (
            f"<tr><td>{esc(r.name)}{note}</td><td>{esc(r.kind)}</td>"
            f'<td class="num">{r.size}²</td>'
            + "".join(f'<td class="num">{_cell(v)}</td>' for v in values)
            + "</tr>"
        )

    head = ("model", "kind", "size", "F1", "recall", "precision", "ROC-AUC", "Dice (positives)")
    rows = []
    for r in report.results:
        rows.append(row(r, r.metrics))
        if r.tuned:
            rows.append(row(r, r.tuned["metrics"], ' <span class="muted">(tuned cut-offs)</span>'))
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _index_figures(report: EvalReport) -> str:
    from ptxfast.pages import esc

    figures = []
    for key, p in report.files.items():
        if p.suffix != ".png":
            continue
        name = esc(p.name)
        caption = esc(key.replace("_", " "))
        figures.append(
            f'<figure><a href="{name}"><img src="{name}" alt="{caption}"></a>'
            f'<figcaption>{caption} · <a href="{name}">{name}</a></figcaption></figure>'
        )
    return "".join(figures)


def write_index(report: EvalReport, path: Path) -> Path:
    """index.html: the metrics of every model and the figures, linked and shown, so the folder
    opens in a browser as one page (files beside it, nothing from the network)."""
    from ptxfast import pages
    from ptxfast.pages import esc

    data = sorted({str(r.data) for r in report.results})
    links = " · ".join(
        f'<a href="{esc(p.name)}">{esc(p.name)}</a>'
        for p in report.files.values()
        # evaluation.json files live beside their checkpoints, not in this folder
        if p.suffix in (".json", ".csv") and p.parent == report.out
    )
    missing = (
        f'<p class="muted">not trained: {esc(", ".join(report.missing))}</p>'
        if report.missing
        else ""
    )
    body = (
        f"<h1>ptxfast evaluate: {esc(report.runs)}</h1>"
        f'<p class="muted">test split of {esc(", ".join(data))} on {esc(report.device)}; '
        f"files: {links}</p>{missing}{_index_table(report)}"
        f"<h2>Figures</h2>{_index_figures(report)}"
    )
    style = (
        "figure { margin: 16px 0; } figure img { max-width: 100%; border: 1px solid var(--line); }"
    )
    doc = pages.page(f"ptxfast evaluate: {report.runs}", body, style=style, local_images=True)
    return pages.write_page(path, doc)
