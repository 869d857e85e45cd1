"""Export: a trained model → one fused graph (TorchScript, TensorRT FP16, ONNX) → a verified artifact.

`export_model(ExportConfig(...))` reads `runs/<name>/best.pt` (weights only, no code runs), fuses
the model (`ptxfast.inference.fused`), traces and freezes it or compiles it with TensorRT, saves it to a
temporary file, loads that file back and runs it against the eager fp32 model on the validation
split (or fresh synthetic phantoms) — the parity gate. Only an artifact inside the tolerances is
moved into place with its sidecar (`ptxfast.inference.artifact`); anything else leaves no file behind.

Profiles (`export/*.toml`) name a backend, precision, device and batch range; command-line
options override them. Defaults: on CUDA, TensorRT where it can run, else TorchScript (said in
one line), fp16. On a CPU with no backend given, every candidate that runs here
(`CPU_CANDIDATES`: TorchScript fp32 / bf16, ONNX Runtime fp32, OpenVINO fp32 / bf16; bf16 only
with bf16 units, one precision when --precision names it) is built, gated and timed for a few
interleaved calls at the artifact's optimal batch, and the fastest one that passes its gate is
written (`choose_default`); the table of all of them goes into its sidecar (`selection`).

ONNX artifacts (`--backend onnxruntime`, alias `onnx`, or `openvino`) are the fp32 fused graph
as one `.onnx` file (`ptxfast.inference.onnx_graph`): `<name>.onnx-fp32.onnx` for ONNX Runtime, and
`<name>.openvino-<precision>.onnx` for OpenVINO, whose bf16 is a runtime precision (the
inference-precision hint) over the same fp32 bytes, gated as bf16.

The package, one module an idea: `config` (ExportConfig, tolerances, profiles, errors), `plan`
(what to build here), `data` (the gate's labelled images), `gate` (outputs against eager fp32,
through `ptxfast.metrics.parity`), `candidates` (each artifact built, loaded back, timed),
`run` (`export_model` wires them) and `render` (the tables `ptxfast export` prints).
"""

from __future__ import annotations

from ptxfast.environment import cpu_bf16
from ptxfast.export.candidates import SELECTION_CALLS, choose_default, time_predictors
from ptxfast.export.config import (
    DEFAULT_PARITY_N,
    DEFAULT_TOLERANCES,
    PROFILE_DIR,
    ExportConfig,
    ExportError,
    ExportResult,
    ParityError,
    Tolerance,
    load_profile,
    parse_batch,
    profile_path,
)
from ptxfast.export.data import dataset_batches, phantom_batches
from ptxfast.export.gate import collect_outputs, compare_outputs, gate, strict_fp32
from ptxfast.export.plan import BACKEND_ALIASES, CPU_CANDIDATES, DEFAULT_BATCH, Plan, plan
from ptxfast.export.run import export_model

__all__ = [
    "BACKEND_ALIASES",
    "CPU_CANDIDATES",
    "DEFAULT_BATCH",
    "DEFAULT_PARITY_N",
    "DEFAULT_TOLERANCES",
    "PROFILE_DIR",
    "SELECTION_CALLS",
    "ExportConfig",
    "ExportError",
    "ExportResult",
    "ParityError",
    "Plan",
    "Tolerance",
    "choose_default",
    "collect_outputs",
    "compare_outputs",
    "cpu_bf16",
    "dataset_batches",
    "export_model",
    "gate",
    "load_profile",
    "parse_batch",
    "phantom_batches",
    "plan",
    "profile_path",
    "strict_fp32",
    "time_predictors",
]
