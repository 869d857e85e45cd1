"""What a benchmark run measured: `BenchReport` (the JSON file) and its three kinds of row.

Every row of a kind has exactly the same keys (None where a figure does not apply or was not
measured): `ROW_KEYS` for throughput, latency, memory and telemetry per variant × batch size,
`PARITY_KEYS` for parity against eager fp32 per variant, `STAGE_KEYS` for the stages of scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ptxfast import errors
from ptxfast.files import json_clean

__all__ = [
    "PARITY_KEYS",
    "ROW_KEYS",
    "SCHEMA_VERSION",
    "STAGE_KEYS",
    "BenchReport",
    "first_line",
    "keyed",
    "row",
    "set_speedups",
]

SCHEMA_VERSION = 1

ROW_KEYS = (
    "variant", "backend", "precision", "path", "status", "error", "model", "size", "device",
    "batch", "build_s", "first_call_s", "warmup", "iters", "repeats", "samples",
    "images_per_s", "images_per_s_std", "images_per_s_min", "images_per_s_max",
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
    "image_ms_p50", "image_ms_p90", "image_ms_p99",
    "peak_memory_mib", "resident_memory_mib", "memory_source",
    "gpu_util_mean", "gpu_util_max", "power_mean_w", "power_max_w", "energy_j",
    "energy_j_per_image", "energy_source", "speedup_vs_eager",
)  # fmt: skip
PARITY_KEYS = (
    "variant", "backend", "precision", "status", "error", "n", "n_pos", "agreement",
    "n_disagree", "f1_ref", "f1", "delta_f1", "recall_ref", "recall", "delta_recall",
    "auc_ref", "auc", "delta_auc", "max_abs_diff", "mean_abs_diff", "threshold",
)  # fmt: skip
STAGE_KEYS = (
    "variant", "status", "error", "batch", "files", "decode_errors", "decode_ms_per_image",
    "decode_workers", "decode_images_per_s", "h2d_ms_per_image", "h2d_images_per_s",
    "compute_ms_per_image", "compute_images_per_s", "d2h_ms_per_image", "d2h_images_per_s",
    "serial_images_per_s", "bound", "bound_images_per_s",
)  # fmt: skip


@dataclass
class BenchReport:
    """What a run measured; `as_dict()` is the JSON file."""

    environment: dict[str, Any]
    config: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    parity: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = False  # False while running, or when the run was cut short

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and infinities as null)."""
        return json_clean(
            {
                "schema": SCHEMA_VERSION,
                "complete": self.complete,
                "seconds": self.seconds,
                "environment": self.environment,
                "config": self.config,
                "model": self.model,
                "data": self.data,
                "rows": self.rows,
                "parity": self.parity,
                "stages": self.stages,
                "notes": self.notes,
            }
        )


def row(**values: Any) -> dict[str, Any]:
    """A ROW_KEYS row; a KeyError for a key that is not one (a typo would drop a figure)."""
    out = dict.fromkeys(ROW_KEYS)
    unknown = set(values) - set(ROW_KEYS)
    if unknown:
        raise KeyError(f"not row keys: {sorted(unknown)}")
    out.update(values)
    return out


def keyed(keys: Sequence[str], **values: Any) -> dict[str, Any]:
    """A row with exactly `keys`: the `values` among them, None for the rest."""
    out = dict.fromkeys(keys)
    out.update({k: v for k, v in values.items() if k in keys})
    return out


def first_line(err: BaseException) -> str:
    """`Type: first line of the message`, what a row records of an error."""
    return errors.first_line(err, typed=True)


def set_speedups(rows: list[dict[str, Any]]) -> None:
    """Fill `speedup_vs_eager` of each measured row: its images/s over eager fp32's at the same
    batch size."""
    base = {
        r["batch"]: r["images_per_s"]
        for r in rows
        if r["variant"] == "eager" and r["status"] == "ok" and r["images_per_s"]
    }
    for r in rows:
        if r["status"] == "ok" and r["batch"] in base:
            r["speedup_vs_eager"] = r["images_per_s"] / base[r["batch"]]
