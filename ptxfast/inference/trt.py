"""TensorRT through Torch-TensorRT: availability, FP16 compilation of a fused model, save and load.

Everything here imports `torch_tensorrt` lazily and guards it: the package is an optional extra
(`pip install 'ptxfast[tensorrt]'`), and even when installed its import can fail on a machine
without a driver. `unavailable_reason()` turns each of those cases into one line.

Two compilation paths, chosen by what the installed wheel offers:

- "ts": the TorchScript frontend (`ENABLED_FEATURES.torchscript_frontend`): the traced fused graph
  is compiled with `torch_tensorrt.compile(..., ir="ts")` and saved with `torch.jit.save`; the
  file is TorchScript whose engine op needs `import torch_tensorrt` before `torch.jit.load`.
- "dynamo": `torch_tensorrt.compile(..., ir="dynamo")` and `torch_tensorrt.save(...,
  output_format="exported_program")`; loaded with `torch_tensorrt.load(...).module()`.

FP16 is a half model fed half inputs and compiled strongly typed: with TensorRT 10's explicit
typing and TensorRT 11 (which ignores `enabled_precisions`) the engine runs in the dtypes the
graph carries, so the model's dtype, not a builder flag, makes it FP16.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from ptxfast.errors import first_line

INSTALL_HINT = "pip install 'ptxfast[tensorrt]'"


def cache_dir() -> Path:
    """Where TensorRT timing and engine caches live: $PTXFAST_CACHE/trt or ~/.cache/ptxfast/trt."""
    root = os.environ.get("PTXFAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ptxfast"
    )
    return Path(root) / "trt"


@functools.cache
def _import() -> tuple[Any, str | None]:
    """(torch_tensorrt module or None, why not). Cached: a failed import is not retried."""
    try:
        import torch_tensorrt
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "torch_tensorrt":
            return None, f"torch-tensorrt is not installed ({INSTALL_HINT})"
        return None, f"torch-tensorrt failed to import: {err} ({INSTALL_HINT})"
    except Exception as err:  # no driver, a missing libnvinfer, an ABI mismatch: all the same here
        first = first_line(err)
        return None, f"torch-tensorrt failed to import ({type(err).__name__}: {first})"
    return torch_tensorrt, None


def torch_tensorrt_module():
    """The imported `torch_tensorrt`, or a RuntimeError with the reason it is not usable."""
    module, reason = _import()
    if module is None:
        raise RuntimeError(reason)
    return module


def unavailable_reason(device: str | torch.device | None = None) -> str | None:
    """None when TensorRT can run on `device` (default: the current CUDA device), else why not."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type != "cuda" and torch.cuda.is_available():
        return f"tensorrt runs on CUDA devices, not {device}; use --device cuda"
    if not torch.cuda.is_available():
        return (
            "tensorrt backend needs a CUDA GPU; none is visible (torch.cuda.is_available() is "
            "False)"
        )
    module, reason = _import()
    if module is None:
        return f"tensorrt backend needs torch-tensorrt: {reason}"
    features = getattr(module, "ENABLED_FEATURES", None)
    if features is not None and not (
        getattr(features, "torchscript_frontend", False)
        or getattr(features, "dynamo_frontend", False)
    ):
        return "this torch-tensorrt build has neither the TorchScript nor the dynamo frontend"
    return None


def versions() -> dict[str, str | None]:
    """torch-tensorrt and TensorRT versions (None where not installed or not importable)."""
    module, _ = _import()
    out: dict[str, str | None] = {"torch_tensorrt": None, "tensorrt": None}
    if module is not None:
        out["torch_tensorrt"] = str(getattr(module, "__version__", None))
        try:
            import tensorrt

            out["tensorrt"] = str(tensorrt.__version__)
        except Exception:
            out["tensorrt"] = None
    return out


def _ts_frontend(module) -> bool:
    features = getattr(module, "ENABLED_FEATURES", None)
    return bool(getattr(features, "torchscript_frontend", False))


def _supported(fn: Callable, options: dict[str, Any]) -> dict[str, Any]:
    """The options `fn` names in its signature: settings move between releases, and an unknown
    keyword would be an error (or, through **kwargs, silently dropped)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return options
    return {k: v for k, v in options.items() if k in params}


@dataclass
class Compiled:
    """A TensorRT-compiled fused model and how to write it."""

    module: Callable[[torch.Tensor], Any]
    path: str  # "ts" (TorchScript frontend) or "dynamo"
    ext: str  # file extension of the saved artifact: "ts" or "ep"
    save: Callable[[BinaryIO], None]  # writes the artifact to an open binary file
    precision: str  # what the engine runs, as far as it can be inspected
    precision_source: str  # how `precision` was found


def _inputs(module, batch: tuple[int, int, int], size: int, dtype: torch.dtype):
    lo, opt, hi = batch
    return [
        module.Input(
            min_shape=(lo, 1, size, size),
            opt_shape=(opt, 1, size, size),
            max_shape=(hi, 1, size, size),
            dtype=dtype,
        )
    ]


def compile_fused(
    fused: nn.Module,
    *,
    size: int,
    batch: tuple[int, int, int],
    device: torch.device,
    dtype: torch.dtype = torch.half,
    path: str = "auto",
) -> Compiled:
    """Compile the fused model (already on `device`, in `dtype`, eval) with TensorRT.

    path: "ts" (TorchScript frontend), "dynamo", or "auto" (ts where the wheel has it, else
    dynamo). Batch is dynamic over `batch` = (min, opt, max). Timing and engine caches live
    under `cache_dir()`, so a second export of the same model builds in seconds.
    """
    tt = torch_tensorrt_module()
    if path == "auto":
        path = "ts" if _ts_frontend(tt) else "dynamo"
    example = torch.rand(batch[1], 1, size, size, device=device).to(dtype)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if path == "ts":
        if not _ts_frontend(tt):
            raise RuntimeError(
                "this torch-tensorrt build has no TorchScript frontend; use the dynamo path"
            )
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.filterwarnings("ignore", category=FutureWarning)
            traced = torch.jit.trace(fused, example, check_trace=False)
        compiled = tt.compile(
            traced,
            ir="ts",
            inputs=_inputs(tt, batch, size, dtype),
            enabled_precisions={dtype},
            truncate_long_and_double=True,
        )

        def save(file: BinaryIO) -> None:
            torch.jit.save(compiled, file)

        precision, source = _precision_of(compiled, dtype)
        return Compiled(compiled, "ts", "ts", save, precision, source)

    from torch_tensorrt.dynamo import compile as dynamo_compile

    options = _supported(
        dynamo_compile,
        {
            "device": device,
            "use_explicit_typing": True,  # strongly typed: the half model makes the engine FP16
            "min_block_size": 1,
            "timing_cache_path": str(cache / "timing_cache.bin"),
            "cache_built_engines": True,
            "reuse_cached_engines": True,
            "engine_cache_dir": str(cache / "engines"),
        },
    )
    arg_inputs = _inputs(tt, batch, size, dtype)
    compiled = tt.compile(fused, ir="dynamo", arg_inputs=arg_inputs, **options)

    def save(file: BinaryIO) -> None:
        extra: dict[str, Any] = {"arg_inputs": [example]}
        if batch[0] == batch[2]:
            pass  # a static batch: the example's shape is the only one
        elif "dynamic_shapes" in inspect.signature(tt.save).parameters:
            dim = torch.export.Dim("batch", min=batch[0], max=batch[2])
            extra["dynamic_shapes"] = {"x": {0: dim}}  # "x": Fused.forward's argument
        else:
            extra = {"arg_inputs": arg_inputs}  # older releases infer it from Input ranges
        # An open file, not a path: torch.export warns on (and will refuse) names not ending
        # in .pt2, and artifacts end in .ep.
        tt.save(compiled, file, output_format="exported_program", **extra)

    precision, source = _precision_of(compiled, dtype)
    return Compiled(compiled, "dynamo", "ep", save, precision, source)


def engine_bytes(
    fused: nn.Module, *, size: int, batch: tuple[int, int, int], dtype: torch.dtype = torch.half
) -> bytes:
    """The fused model (on its CUDA device, in `dtype`, eval) as one serialized TensorRT engine
    over the batch range `batch`: the `model.plan` Triton's tensorrt_plan platform loads."""
    tt = torch_tensorrt_module()
    convert = tt.convert_method_to_trt_engine
    options = _supported(
        convert,
        {"use_explicit_typing": True, "enabled_precisions": {dtype}, "min_block_size": 1},
    )
    engine = convert(
        fused, "forward", arg_inputs=_inputs(tt, batch, size, dtype), ir="dynamo", **options
    )
    return bytes(engine)


def engine_io(engine: bytes) -> list[tuple[str, str, bool]]:
    """[(name, dtype, is_input)] of a serialized engine's tensors in binding order; dtype as
    TensorRT names it (FLOAT, HALF, BF16, INT32, INT64). What Triton's config must say of a
    tensorrt_plan model: the engine's own names and types, not the ONNX graph's."""
    import tensorrt

    runtime = tensorrt.Runtime(tensorrt.Logger(tensorrt.Logger.ERROR))
    e = runtime.deserialize_cuda_engine(engine)
    out = []
    for i in range(e.num_io_tensors):
        name = e.get_tensor_name(i)
        is_input = e.get_tensor_mode(name) == tensorrt.TensorIOMode.INPUT
        out.append((name, e.get_tensor_dtype(name).name, is_input))
    return out


def load(file: str | Path, path: str, device: torch.device) -> Callable[[torch.Tensor], Any]:
    """Load a saved TensorRT artifact (after its sha256 was checked) for `device`."""
    tt = torch_tensorrt_module()
    if path == "ts":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            return torch.jit.load(str(file), map_location=device).eval()
    with open(file, "rb") as f:  # a file object, for the same reason as in save
        loaded = tt.load(f)
    return loaded.module() if hasattr(loaded, "module") else loaded


_TRT_PRECISIONS = {"half": "fp16", "float": "fp32", "bfloat16": "bf16", "int8": "int8"}


def _precision_of(compiled: Any, dtype: torch.dtype) -> tuple[str, str]:
    """(precision, how it was found): the engine inspector's layer precisions where it reports
    them, else the dtype the strongly typed graph was built in."""
    counts: dict[str, int] = {}
    modules = compiled.modules() if hasattr(compiled, "modules") else []
    for m in modules:
        getter = getattr(m, "get_layer_info", None)
        if getter is None:
            continue
        try:
            info = json.loads(getter())
        except Exception:
            continue
        for layer in info.get("Layers", []) if isinstance(info, dict) else []:
            if isinstance(layer, dict) and "Precision" in layer:
                p = str(layer["Precision"]).lower()
                counts[p] = counts.get(p, 0) + 1
    if counts:
        top = max(counts, key=counts.__getitem__)
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        return _TRT_PRECISIONS.get(top, top), f"engine inspector: layers {summary}"
    name = {torch.half: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    return name, "graph dtype (strongly typed build; the engine inspector gave no layer precisions)"
