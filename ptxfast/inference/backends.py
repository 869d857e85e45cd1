"""Which inference backends can run here, and at which precisions; what is missing when not.

`available_backends(device)` maps each backend to None (it runs) or the reason it cannot (a
missing package, compiler or GPU, said with the fix); `require_backend` and `check_precision`
turn those into one-line `PredictorError`s before anything is built.
"""

from __future__ import annotations

import os
import shutil

import torch

from ptxfast.environment import resolve_device
from ptxfast.inference.fused import PRECISIONS

BACKENDS = ("eager", "torchscript", "tensorrt", "inductor", "onnxruntime", "openvino")
ONNX_BACKENDS = ("onnxruntime", "openvino")  # they run the ONNX file of the fused graph


class PredictorError(ValueError):
    """A predictor that cannot be made or run as asked; the message says what to do."""


def _inductor_reason(device: torch.device) -> str | None:
    if not hasattr(torch, "compile"):
        return "inductor needs torch.compile (torch >= 2.0)"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except Exception as err:
            return (
                f"inductor on CUDA needs triton ({type(err).__name__}: {err}); pip install triton"
            )
        return None
    compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        return (
            "inductor on CPU needs a C++ compiler (g++ or clang++) on PATH; "
            "install one (e.g. apt-get install g++) or set CXX"
        )
    return None


def available_backends(device: str | torch.device | None = "auto") -> dict[str, str | None]:
    """{backend: None if it can run on `device`, else the reason it cannot}."""
    from ptxfast.inference import onnx_graph, trt

    dev = resolve_device(device)
    openvino = onnx_graph.unavailable_reason("openvino")
    if openvino is None and dev.type != "cpu":
        openvino = f"the openvino backend runs on the CPU here, not {dev}; use --device cpu"
    return {
        "eager": None,
        "torchscript": None if hasattr(torch.jit, "trace") else "this torch has no torch.jit",
        "tensorrt": trt.unavailable_reason(dev),
        "inductor": _inductor_reason(dev),
        "onnxruntime": onnx_graph.unavailable_reason("onnx")
        or onnx_graph.unavailable_reason("onnxruntime"),
        "openvino": onnx_graph.unavailable_reason("onnx") or openvino,
    }


def require_backend(backend: str, device: torch.device) -> None:
    """Raise a PredictorError naming what is missing when `backend` cannot run on `device`."""
    if backend not in BACKENDS:
        raise PredictorError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    reason = available_backends(device)[backend]
    if reason is not None:
        raise PredictorError(reason)


def check_precision(backend: str, precision: str, device: torch.device) -> None:
    """Refuse precisions a backend cannot run on a device type, with what to use instead."""
    if precision not in PRECISIONS:
        raise PredictorError(f"precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise PredictorError(
            "fp16 runs on CUDA GPUs; on a CPU use --precision bf16 (CPUs with bf16 units) or fp32"
        )
    if backend == "tensorrt" and precision == "bf16":
        raise PredictorError("the tensorrt backend exports fp16 or fp32; use --precision fp16")
    if backend == "onnxruntime" and precision != "fp32":
        raise PredictorError(
            "the onnxruntime backend runs the fp32 ONNX graph; for bf16 use --backend openvino"
        )
