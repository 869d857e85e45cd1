"""The backend registry: every runtime of the fused graph as one `Backend` in `BACKENDS`.

Each entry says what the runtime is (its name, the precisions it runs, the artifact file it
writes), why it cannot run on a device (a missing package, compiler or GPU, said with the fix),
and how it makes a runnable module: `build` from an fp32 model (benchmarks and
`runtime.build_predictor`), `export` (build, save to a file, load the file back: the candidate
`ptxfast export` gates), and `load` (an artifact's file, `runtime.load_predictor`). Adding a
backend is one entry here; nothing outside `ptxfast.inference` compares backend names.
`backend(name)`, `require_backend` and `check_precision` turn an unknown name, a missing runtime
or a precision a backend cannot run into one-line `PredictorError`s before anything is built.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptxfast.environment import resolve_device
from ptxfast.errors import PtxfastError
from ptxfast.inference.fused import (
    PRECISIONS,
    fuse,
    graph_precision,
    input_dtype,
    quiet_jit,
    to_torchscript,
)

Module = Callable[[torch.Tensor], Any]


class PredictorError(PtxfastError):
    """A predictor that cannot be made or run as asked; the message says what to do."""


@dataclass(frozen=True)
class Request:
    """What to build: the fused model's name, size, precision and device, and each backend's
    options (a backend reads the ones that concern it)."""

    name: str
    size: int
    precision: str
    device: torch.device
    batch: tuple[int, int, int] = (1, 8, 32)  # (min, opt, max); TensorRT engines hold it
    return_mask: bool = False
    channels_last: bool = True
    tta: str = "none"  # test-time augmentation inside the graph (fused.TTAS)
    check_trace: bool = True  # torchscript: compare the trace with eager at another batch
    optimize: bool = False  # torchscript: torch.jit.optimize_for_inference (a load-time choice)
    cpu_fusion: bool = True  # torchscript on the CPU: the oneDNN rewrite (cpu_fusion)
    onnx_file: Path | None = None  # ONNX backends: reuse (or write) this export
    inductor_mode: str | None = None  # inductor: a torch.compile mode instead of the default
    dynamic: bool | None = False  # inductor: torch.compile's dynamic (None: automatic)


@dataclass
class Built:
    """A runnable module, how it was made (the predictor's `path`), and the Predictor keyword
    arguments this backend sets (input dtype, autocast, device, channels_last, mask_output)."""

    module: Module
    path: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Saved(Built):
    """A built artifact written to `file` and loaded back from it: also its extension and the
    sidecar fields that depend on the backend (precision actually run, input dtype, ...)."""

    file: Path = Path()
    ext: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    """One runtime of the fused graph (see the module docstring)."""

    name: str
    title: str  # how an error names its artifacts: "a TensorRT artifact"
    precisions: tuple[str, ...]
    precision_hint: str  # what to ask for instead of a precision it cannot run
    unavailable: Callable[[torch.device], str | None]  # None: it runs on that device
    build: Callable[[nn.Module, Request], Built]
    # (model, request, file to write, cache the ONNX candidates share) -> Saved; None: no artifact
    export: Callable[[nn.Module, Request, Path, dict[str, Any]], Saved] | None = None
    # (file, device, path, precision, runtime record) -> module; None: no artifact to load
    load: Callable[..., Module] | None = None
    # (model, request, file): the engine serialized as a Triton plan (`export --triton`); None: none
    triton_plan: Callable[[nn.Module, Request, Path], None] | None = None
    verb: str = "building"  # what `ptxfast export` says it is doing ("compiling" an engine)
    instead: str = ""  # what to use where it cannot run (`refusal` adds it to the reason)
    file_tag: str = ""  # the backend's part of an artifact file name ("" : its name)
    threads_itself: bool = False  # runs its own thread pool: one batch at a time on every core
    fixed_batch: bool = False  # an engine built for the batch range only (pad and split)
    onnx: bool = False  # runs the ONNX file of the fused graph (shared by every ONNX backend)
    slow_cpu_compile: bool = False  # compiling takes minutes on a few CPU cores
    options: tuple[str, ...] = ()  # the Request fields of its own it reads (callers pass these)

    @property
    def tag(self) -> str:
        """The backend's part of an artifact's file name (`eb3un+eb3.<tag>-fp32.ts`)."""
        return self.file_tag or self.name

    def refusal(self, device: torch.device) -> str | None:
        """None when it runs on `device`; else why not, followed by what to use `instead`."""
        reason = self.unavailable(device)
        return f"{reason}. {self.instead}" if reason is not None and self.instead else reason


# ------------------------------------------------------------------------------ availability


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


def _tensorrt_reason(device: torch.device) -> str | None:
    from ptxfast.inference import trt

    return trt.unavailable_reason(device)


def _onnx_reason(runtime: str, device: torch.device) -> str | None:
    from ptxfast.inference import onnx_graph

    reason = onnx_graph.unavailable_reason("onnx") or onnx_graph.unavailable_reason(runtime)
    if reason is None and runtime == "openvino" and device.type != "cpu":
        return f"the openvino backend runs on the CPU here, not {device}; use --device cpu"
    return reason


def _torchscript_reason(device: torch.device) -> str | None:
    return None if hasattr(torch.jit, "trace") else "this torch has no torch.jit"


# ------------------------------------------------------------------------------ the builders


def _fused(model: nn.Module, req: Request, **overrides: Any):
    """The fused module of `req` (a copy of `model`), with `overrides` of fuse's arguments."""
    kwargs = dict(
        precision=req.precision, device=req.device, return_mask=req.return_mask,
        channels_last=req.channels_last, tta=req.tta,
    )  # fmt: skip
    return fuse(model, req.name, req.size, **{**kwargs, **overrides})


def _compiled_dtype(req: Request) -> dict[str, Any]:
    return {"input_dtype": input_dtype(PRECISIONS[req.precision])}


def _build_eager(model: nn.Module, req: Request) -> Built:
    fused = _fused(model, req, precision="fp32")  # fp16 / bf16 by autocast
    amp = None if req.precision == "fp32" else PRECISIONS[req.precision]
    return Built(fused, "eager", {"autocast_dtype": amp})


def _build_torchscript(model: nn.Module, req: Request) -> Built:
    scripted = to_torchscript(
        _fused(model, req), req.batch, req.device, channels_last=req.channels_last,
        check=req.check_trace, cpu_fusion=req.cpu_fusion,
    )  # fmt: skip
    if req.optimize:
        with quiet_jit():
            scripted = torch.jit.optimize_for_inference(scripted)
    return Built(scripted, "trace+optimized" if req.optimize else "trace", _compiled_dtype(req))


def _export_torchscript(model: nn.Module, req: Request, file: Path, _shared: dict) -> Saved:
    from ptxfast.inference import cpu_fusion

    scripted = to_torchscript(_fused(model, req), req.batch, req.device)
    with quiet_jit():
        torch.jit.save(scripted, str(file))
    loaded = _load_torchscript(file, req.device)
    actual, weights = graph_precision(loaded)
    precision = {
        "requested": req.precision,
        "actual": actual,
        "source": "dtype of the frozen graph's weight constants",
        **({"weight_elements": weights} if weights else {}),
    }
    fields = {"precision": precision, "cpu_fusion": cpu_fusion.describe(loaded)}
    return Saved(loaded, "trace", _compiled_dtype(req), file, "ts", fields)


def _load_torchscript(file: Path, device: torch.device, **_: Any) -> Module:
    with quiet_jit():
        return torch.jit.load(str(file), map_location=device).eval()


def _compile_tensorrt(model: nn.Module, req: Request):
    from ptxfast.inference import trt

    fused = _fused(model, req)
    return trt.compile_fused(
        fused, size=req.size, batch=req.batch, device=req.device, dtype=fused.dtype
    )


def _build_tensorrt(model: nn.Module, req: Request) -> Built:
    compiled = _compile_tensorrt(model, req)
    return Built(compiled.module, compiled.path, _compiled_dtype(req))


def _export_tensorrt(model: nn.Module, req: Request, file: Path, _shared: dict) -> Saved:
    compiled = _compile_tensorrt(model, req)
    with open(file, "wb") as f:  # a file object: exported programs want .pt2 names
        compiled.save(f)
    loaded = _load_tensorrt(file, req.device, path=compiled.path)
    precision = {
        "requested": req.precision,
        "actual": compiled.precision,
        "source": compiled.precision_source,
    }
    fields = {"precision": precision}
    return Saved(loaded, compiled.path, _compiled_dtype(req), file, compiled.ext, fields)


def _load_tensorrt(file: Path, device: torch.device, *, path: str = "ts", **_: Any) -> Module:
    from ptxfast.inference import trt

    return trt.load(file, path, device)


def _tensorrt_plan(model: nn.Module, req: Request, file: Path) -> None:
    from ptxfast.inference import trt

    fused = _fused(model, req)
    file.write_bytes(trt.engine_bytes(fused, size=req.size, batch=req.batch, dtype=fused.dtype))


def _build_inductor(model: nn.Module, req: Request) -> Built:
    mode = req.inductor_mode or (
        "max-autotune-no-cudagraphs" if req.device.type == "cuda" else None
    )
    compiled = torch.compile(_fused(model, req), mode=mode, dynamic=req.dynamic)
    path = f"inductor:{req.inductor_mode}" if req.inductor_mode else "inductor"
    return Built(compiled, path, _compiled_dtype(req))


# ONNX: one fp32 file of the fused graph on the CPU, run by ONNX Runtime or OpenVINO.


def write_onnx(model: nn.Module, req: Request, file: Path) -> dict[str, Any]:
    """Write the ONNX graph of `req` (the fused graph in fp32, NCHW, on the CPU, whatever
    `req`'s precision and device) to `file`; what was used (`onnx_graph.to_onnx`). The one
    graph every ONNX backend runs and `ptxfast export --triton` serves."""
    from ptxfast.inference import onnx_graph

    fused = _fused(model, req, precision="fp32", device="cpu", channels_last=False)
    return onnx_graph.to_onnx(fused, file)


def _onnx_options(info: dict[str, Any]) -> dict[str, Any]:
    cpu = torch.device("cpu")
    return {"channels_last": False, "device": cpu, "mask_output": "mask" in info["outputs"]}


def _onnxruntime(file: Path, device: torch.device, **_: Any) -> Module:
    from ptxfast.inference import onnx_graph

    return onnx_graph.onnxruntime_module(file, device=device.type)


def _openvino(
    file: Path, device: torch.device, *, precision: str = "fp32", runtime: dict | None = None, **_
) -> Module:
    from ptxfast.inference import onnx_graph

    hint = str((runtime or {}).get("performance_hint") or "THROUGHPUT")
    return onnx_graph.openvino_module(file, precision=precision, hint=hint)


def _build_onnx(load: Callable[..., Module], model: nn.Module, req: Request) -> Built:
    """Export the fp32 fused graph to ONNX (or reuse `req.onnx_file`) and open it with `load`."""
    from ptxfast.inference import onnx_graph

    with tempfile.TemporaryDirectory(prefix="ptxfast-onnx-") as tmp:
        path = Path(req.onnx_file) if req.onnx_file else Path(tmp) / f"{req.name}.onnx"
        info = onnx_graph.describe(path) if path.is_file() else write_onnx(model, req, path)
        module = load(path, torch.device("cpu"), precision=req.precision)
    return Built(module, f"onnx:{info['exporter']}", _onnx_options(info))


def _export_onnx(
    load: Callable[..., Module], model: nn.Module, req: Request, file: Path, shared: dict
) -> Saved:
    """An ONNX candidate over the fp32 ONNX export that every ONNX candidate of one export
    shares (`shared` holds it: path, info; the first writes it to `file`)."""
    if "path" not in shared:
        shared["info"] = write_onnx(model, req, file)
        shared["path"] = file
    path, info = shared["path"], shared["info"]
    module = load(path, torch.device("cpu"), precision=req.precision)
    runtime = dict(module.info)
    if runtime.get("inference_precision") is not None:  # what OpenVINO's CPU plugin runs
        actual = "bf16" if runtime["inference_precision"] == "bf16" else "fp32"
        source = "INFERENCE_PRECISION_HINT of the compiled OpenVINO model"
    else:
        actual, source = "fp32", "float32 initializers of the ONNX graph"
    precision = {"requested": req.precision, "actual": actual, "source": source}
    fields = {"precision": precision, "onnx": info, "runtime": runtime}
    return Saved(module, f"onnx:{info['exporter']}", _onnx_options(info), path, "onnx", fields)


def _onnx_backend(name: str, load: Callable[..., Module], **attrs: Any) -> Backend:
    return Backend(
        name=name, title=f"an ONNX artifact for {name}",
        unavailable=functools.partial(_onnx_reason, name),
        build=functools.partial(_build_onnx, load),
        export=functools.partial(_export_onnx, load), load=load,
        threads_itself=True, onnx=True, options=("onnx_file",), **attrs,
    )  # fmt: skip


# Every backend, in the order the runtime lists them.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "eager", "an eager model", ("fp32", "fp16", "bf16"), "", lambda d: None, _build_eager
        ),
        Backend(
            "torchscript",
            "a TorchScript artifact",
            ("fp32", "fp16", "bf16"),
            "",
            _torchscript_reason,
            _build_torchscript,
            _export_torchscript,
            _load_torchscript,
            options=("check_trace", "optimize", "cpu_fusion"),
        ),  # fmt: skip
        Backend(
            "tensorrt",
            "a TensorRT artifact",
            ("fp16", "fp32"),
            "the tensorrt backend exports fp16 or fp32; use --precision fp16",
            _tensorrt_reason,
            _build_tensorrt,
            _export_tensorrt,
            _load_tensorrt,
            fixed_batch=True,
            verb="compiling",
            triton_plan=_tensorrt_plan,
            instead="Use --backend torchscript.",
        ),  # fmt: skip
        Backend(
            "inductor",
            "an inductor model",
            ("fp32", "fp16", "bf16"),
            "",
            _inductor_reason,
            _build_inductor,
            slow_cpu_compile=True,
            options=("inductor_mode", "dynamic"),
        ),  # fmt: skip
        _onnx_backend(
            "onnxruntime",
            _onnxruntime,
            precisions=("fp32",),
            file_tag="onnx",
            precision_hint="the onnxruntime backend runs the fp32 ONNX graph; "
            "for bf16 use --backend openvino",
        ),  # fmt: skip
        _onnx_backend(
            "openvino",
            _openvino,
            precisions=("fp32", "bf16"),
            precision_hint="the openvino backend runs fp32 or bf16 on the CPU",
        ),  # fmt: skip
    )
}
# The backends that write an artifact `ptxfast export` can make and `load_predictor` runs.
EXPORTABLE = tuple(name for name, b in BACKENDS.items() if b.export is not None)


def backend(name: str) -> Backend:
    """The registry's entry for `name`; an unknown name is a PredictorError listing them."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise PredictorError(
            f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}"
        ) from None


def available_backends(device: str | torch.device | None = "auto") -> dict[str, str | None]:
    """{backend: None if it can run on `device`, else the reason it cannot (`Backend.refusal`)}."""
    dev = resolve_device(device)
    return {name: b.refusal(dev) for name, b in BACKENDS.items()}


def require_backend(name: str, device: torch.device) -> Backend:
    """The backend `name` when it can run on `device`; else a PredictorError naming what is
    missing (or, for an unknown name, the known ones)."""
    b = backend(name)
    reason = b.refusal(device)
    if reason is not None:
        raise PredictorError(reason)
    return b


def check_precision(name: str, precision: str, device: torch.device) -> None:
    """Refuse precisions a backend cannot run on a device type, with what to use instead."""
    if precision not in PRECISIONS:
        raise PredictorError(f"precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise PredictorError(
            "fp16 runs on CUDA GPUs; on a CPU use --precision bf16 (CPUs with bf16 units) or fp32"
        )
    b = backend(name)
    if precision not in b.precisions:
        raise PredictorError(b.precision_hint)
