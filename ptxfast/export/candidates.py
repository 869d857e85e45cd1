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
from ptxfast.inference import cpu_fusion
from ptxfast.inference.artifact import EXTENSIONS, file_stem
from ptxfast.inference.fused import (
    PRECISIONS,
    FusedError,
    fuse,
    graph_precision,
    input_dtype,
    quiet_jit,
    to_torchscript,
)
from ptxfast.inference.runtime import ONNX_BACKENDS, Predictor, PredictorError, onnx_module

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


def build_candidate(backend: str, precision: str, job: Build) -> Candidate:
    """Build, save and load back one artifact; `job.onnx_file` caches the ONNX export that the
    ONNX Runtime and OpenVINO candidates share."""
    start = time.perf_counter()
    model, p, size, out = job.model, job.plan, job.size, job.out
    tmp = out / f".{artifact_stem(p, backend, precision)}.{os.getpid()}.tmp"
    dtype = PRECISIONS[precision]
    common = dict(
        name=p.name, size=size, backend=backend, precision=precision, batch=p.batch,
        return_mask=p.return_mask, rule=p.rule,
    )  # fmt: skip
    try:
        if backend in ONNX_BACKENDS:
            return _onnx_candidate(backend, precision, job, common)
        candidate = fuse(
            model, p.name, size, precision=precision, device=p.device,
            return_mask=p.return_mask, tta=p.tta,
        )  # fmt: skip
    except FusedError as err:
        raise ExportError(str(err)) from None
    ext = EXTENSIONS["torchscript"]
    if backend == "torchscript":
        try:
            scripted = to_torchscript(candidate, p.batch, p.device)
        except FusedError as err:
            raise ExportError(str(err)) from None
        with quiet_jit():
            torch.jit.save(scripted, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location=p.device).eval()
        path = "trace"
        actual, weights = graph_precision(loaded)
        source = "dtype of the frozen graph's weight constants"
        fusion = {"cpu_fusion": cpu_fusion.describe(loaded)}  # the torch it is bound to
    else:
        from ptxfast.inference import trt

        compiled = trt.compile_fused(
            candidate, size=size, batch=p.batch, device=p.device, dtype=dtype
        )
        ext = compiled.ext
        with open(tmp, "wb") as f:  # a file object: exported programs want .pt2 names
            compiled.save(f)
        loaded = trt.load(tmp, compiled.path, p.device)
        path, actual, source = compiled.path, compiled.precision, compiled.precision_source
        weights, fusion = {}, {}
    predictor = Predictor(
        loaded, device=p.device, input_dtype=input_dtype(dtype), path=path, **common
    )  # fmt: skip
    fields = {
        "path": path,
        "precision": {
            "requested": precision,
            "actual": actual,
            "source": source,
            **({"weight_elements": weights} if weights else {}),
        },
        "input_dtype": str(input_dtype(dtype)).replace("torch.", ""),
        "channels_last": True,
        **fusion,
    }
    return Candidate(backend, precision, predictor, tmp, ext, fields, time.perf_counter() - start)


def _onnx_candidate(backend: str, precision: str, job: Build, common: dict[str, Any]) -> Candidate:
    """An ONNX Runtime or OpenVINO candidate over the fp32 ONNX export (made once per export)."""
    from ptxfast.inference import onnx_graph

    start = time.perf_counter()
    model, p, size, out, onnx_file = job.model, job.plan, job.size, job.out, job.onnx_file
    if "path" not in onnx_file:
        tmp = out / f".{p.name}.onnx.{os.getpid()}.tmp"
        fused = fuse(
            model, p.name, size, device="cpu", return_mask=p.return_mask, channels_last=False,
            tta=p.tta,
        )  # fmt: skip
        try:
            onnx_file["info"] = onnx_graph.to_onnx(fused, tmp)
        except onnx_graph.OnnxError as err:
            raise ExportError(str(err)) from None
        onnx_file["path"] = tmp
        onnx_file["seconds"] = time.perf_counter() - start
    tmp, info = onnx_file["path"], onnx_file["info"]
    try:
        module = onnx_module(backend, tmp, precision, {}, torch.device("cpu"))
    except PredictorError as err:
        raise ExportError(str(err)) from None
    path = f"onnx:{info['exporter']}"
    predictor = Predictor(
        module, device=torch.device("cpu"), path=path, channels_last=False,
        mask_output="mask" in info["outputs"], **common,
    )  # fmt: skip
    runtime = dict(module.info)
    if backend == "openvino":
        actual = "bf16" if runtime["inference_precision"] == "bf16" else "fp32"
        source = "INFERENCE_PRECISION_HINT of the compiled OpenVINO model"
    else:
        actual, source = "fp32", "float32 initializers of the ONNX graph"
    fields = {
        "path": path,
        "precision": {"requested": precision, "actual": actual, "source": source},
        "input_dtype": "float32",
        "channels_last": False,
        "onnx": info,
        "runtime": runtime,
    }
    # The first ONNX candidate's build time includes the export they share.
    seconds = time.perf_counter() - start + onnx_file.pop("seconds", 0.0)
    return Candidate(backend, precision, predictor, tmp, "onnx", fields, seconds)


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
