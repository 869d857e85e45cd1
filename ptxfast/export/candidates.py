"""Candidate artifacts: each (backend, precision) built, saved, loaded back, gated and timed.

`build_candidate` makes one artifact file under a temporary name in the output folder and a
Predictor over the loaded file (TorchScript, TensorRT, or the ONNX export that ONNX Runtime
and OpenVINO candidates share); `time_predictors` and `choose_default` pick the fastest that
passes its gate in a CPU default choice, `selection_row` is its line in the sidecar.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptxfast.export.config import ExportError
from ptxfast.export.plan import Plan
from ptxfast.inference.artifact import file_stem
from ptxfast.inference.backends import Request
from ptxfast.inference.backends import backend as registered
from ptxfast.inference.predictor import Predictor

SELECTION_CALLS = 5  # timed calls of each candidate (after 2 warm-up calls), interleaved


@dataclass
class Candidate:
    """One built artifact awaiting the gate (and, in a CPU default choice, the clock)."""

    backend: str
    precision: str
    predictor: Predictor
    tmp: Path  # the model file, in the output folder under a temporary name
    ext: str
    fields: dict[str, Any]  # sidecar fields that depend on the backend (path, precision, ...)
    build_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    images_per_s: float | None = None

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"


def artifact_stem(p: Plan, backend: str, precision: str) -> str:
    """The artifact's file name without extension; a TTA graph is named apart from the plain one."""
    return file_stem(p.name, backend, precision) + ("" if p.tta == "none" else f"-{p.tta}")


@dataclass
class Build:
    """What every candidate of one export is built from."""

    model: torch.nn.Module  # the fp32 eval model of the checkpoint
    plan: Plan
    size: int
    out: Path  # the output folder: candidate files wait there under temporary names
    onnx_file: dict[str, Any] = field(default_factory=dict)  # the ONNX export candidates share


def candidate_request(job: Build, precision: str) -> Request:
    """What the registry builds for a candidate of `job` at `precision`."""
    p = job.plan
    return Request(p.name, job.size, precision, p.device, p.batch, p.return_mask, tta=p.tta)


def build_candidate(backend: str, precision: str, job: Build) -> Candidate:
    """Build, save and load back one artifact through its backend in the registry
    (`ptxfast.inference.backends`); `job.onnx_file` caches the ONNX export that the ONNX
    Runtime and OpenVINO candidates share."""
    start = time.perf_counter()
    p, req = job.plan, candidate_request(job, precision)
    tmp = job.out / f".{artifact_stem(p, backend, precision)}.{os.getpid()}.tmp"
    if registered(backend).onnx:
        tmp = job.out / f".{p.name}.onnx.{os.getpid()}.tmp"
    saved = registered(backend).export(job.model, req, tmp, job.onnx_file)
    predictor = Predictor(
        saved.module, name=p.name, size=job.size, backend=backend, precision=precision,
        batch=p.batch, return_mask=p.return_mask, rule=p.rule, path=saved.path,
        **{"device": p.device, **saved.options},
    )  # fmt: skip
    fields = {
        "path": saved.path,
        "input_dtype": str(predictor.input_dtype).replace("torch.", ""),
        "channels_last": predictor.channels_last,
        **saved.fields,
    }
    # The first ONNX candidate's build time includes the export the others share.
    seconds = time.perf_counter() - start
    return Candidate(backend, precision, predictor, saved.file, saved.ext, fields, seconds)


def time_predictors(
    predictors: list[Predictor], batch: int, size: int, calls: int = SELECTION_CALLS
) -> list[float]:
    """Images/s of each predictor at `batch` (median of `calls` timed calls after two warm-up
    calls), interleaved call by call so load that comes and goes on a shared machine falls on
    all of them alike."""
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    times: list[list[float]] = [[] for _ in predictors]
    for predictor in predictors:
        for _ in range(2):
            predictor(x)
    for _ in range(calls):
        for predictor, t in zip(predictors, times, strict=True):
            t0 = time.perf_counter()
            predictor(x)
            t.append(time.perf_counter() - t0)
    return [batch / float(np.median(t)) for t in times]


def choose_default(candidates: list[Any]) -> Any:
    """The fastest candidate (highest `images_per_s`) whose gate passed (`failed` empty); an
    ExportError naming each candidate's failures when none passed. Ties keep the earlier one."""
    passed = [c for c in candidates if not c.failed]
    if not passed:
        why = "; ".join(f"{c.label}: {', '.join(c.failed)}" for c in candidates)
        raise ExportError(f"no CPU candidate passed its parity gate ({why}); nothing written")
    return max(passed, key=lambda c: (c.images_per_s or 0.0, -candidates.index(c)))


def selection_row(c: Candidate, chosen: Candidate) -> dict[str, Any]:
    f = c.figures
    return {
        "backend": c.backend,
        "precision": c.precision,
        "images_per_s": c.images_per_s,
        "build_s": round(c.build_s, 2),
        "passed": not c.failed,
        "failed": c.failed,
        "agreement": f.get("agreement"),
        "delta_f1": f.get("delta_f1"),
        "delta_auc": f.get("delta_auc"),
        "delta_dice": f.get("delta_dice"),
        "max_abs_diff": f.get("max_abs_diff"),
        "chosen": c is chosen,
    }
