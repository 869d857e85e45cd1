"""The fused graph as one ONNX file, and the two runtimes that run it: ONNX Runtime and OpenVINO.

`to_onnx(fused, path)` writes the same `ptxfast.inference.fused.Fused` graph the TorchScript artifact
holds (normalisation inside; segmenter → sigmoid mask → concat → classifier; probability, area
and, for segmenters and cascades, the mask) with a symbolic batch dimension, as one file that
`onnx.checker` accepts. The TorchScript-based exporter (`dynamo=False`, opset 18) is tried
first and the dynamo one (`dynamo=True`, onnxscript) is the fallback; which one wrote the file
is returned for the sidecar. Both give the same graph within float rounding; the order is by
cost: on the 2-core development machine the dynamo exporter took 45 s for rn34 at 64² and 69 s
for rn34un+rn34, the TorchScript-based one 5 s and 10 s, and the export runs in `make demo` and
the tests. When torch drops the TorchScript-based exporter, the fallback takes over. The graph always carries the mask output where there is one
(computing the area needs it anyway), so the parity gate can measure Dice on any ONNX artifact;
the predictor hands it to callers only when the artifact was exported with `--return-mask`.

`onnxruntime_module` and `openvino_module` wrap a file in a callable with the TorchScript
module's signature (a torch batch N×1×S×S in, a tuple of torch tensors out), so
`ptxfast.inference.runtime.Predictor` runs them like any backend:

- ONNX Runtime: the CPU execution provider, or the TensorRT / CUDA execution providers first
  when the installed onnxruntime has them and a GPU is asked for; the providers in use are
  recorded.
- OpenVINO (CPU): fp32, or bf16 through `INFERENCE_PRECISION_HINT` (CPUs with bf16 units); with
  the THROUGHPUT hint the batch is split over several infer requests (OpenVINO's streams), which
  on two cores ran 1.1–1.6× the single-request LATENCY mode at batch 8.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptxfast.errors import PtxfastError, first_line
from ptxfast.inference.fused import Fused, example_input

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("prob", "area", "mask")
RUNTIMES = ("onnxruntime", "openvino")
_INSTALL = {
    "onnx": "pip install onnx",
    "onnxruntime": "pip install onnxruntime (or onnxruntime-gpu)",
    "openvino": "pip install openvino",
}


class OnnxError(PtxfastError):
    """An ONNX export or runtime that cannot work as asked; the message says what to do."""


def unavailable_reason(runtime: str) -> str | None:
    """Why `runtime` (onnxruntime, openvino, or onnx for exporting) cannot be used here, or None."""
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "onnx": "onnx"}[runtime]
    try:
        __import__(module)
    except Exception as err:  # ImportError, or a broken native library
        return f"the {runtime} backend needs {module} ({type(err).__name__}: {err}); {_INSTALL[runtime]}"
    return None


def require(runtime: str) -> None:
    """Raise OnnxError naming what to install when `runtime` cannot be imported."""
    reason = unavailable_reason(runtime)
    if reason is not None:
        raise OnnxError(reason)


def versions() -> dict[str, str | None]:
    """Versions of onnx, onnxruntime and openvino (None where not installed), for sidecars."""
    out: dict[str, str | None] = {}
    for name in ("onnx", "onnxruntime", "openvino"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", None) or module.get_version())
        except Exception:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------ export


def _output_names(fused: Fused) -> list[str]:
    return list(OUTPUT_NAMES[: 3 if fused.return_mask else 2])


def _export_dynamo(fused: Fused, example: torch.Tensor, path: Path) -> None:
    names = _output_names(fused)
    batch = torch.export.Dim("N", min=1, max=4096)
    program = torch.onnx.export(
        fused,
        (example,),
        dynamo=True,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=names,
        dynamic_shapes={"x": {0: batch}},
        external_data=False,
        optimize=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)


def _export_legacy(fused: Fused, example: torch.Tensor, path: Path) -> None:
    names = _output_names(fused)
    torch.onnx.export(
        fused,
        (example,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=names,
        dynamic_axes={n: {0: "N"} for n in [INPUT_NAME, *names]},
        do_constant_folding=True,
    )


def to_onnx(
    fused: Fused, path: str | Path, *, exporter: str = "auto", check_batch: int = 3
) -> dict[str, Any]:
    """Write `fused` (fp32, any layout) to `path` as one ONNX file; what was used, for the sidecar.

    For segmenters and cascades the graph returns the mask as its third output whatever
    `fused.return_mask` says (see the module docstring). `exporter`: auto (the TorchScript-based
    exporter, else dynamo), torchscript or dynamo. The file is checked with
    `onnx.checker.check_model` and must answer a batch of `check_batch` images (not the traced
    one) in ONNX Runtime within 1e-4 of the eager module, so a baked-in batch size fails here.
    """
    require("onnx")
    import onnx

    if fused.dtype != torch.float32:
        raise OnnxError("the ONNX artifact is fp32; OpenVINO runs it in bf16 by its own hint")
    graph = Fused(fused.model, fused.kind, fused.size, fused.dtype, fused.kind != "classifier")
    graph = graph.eval()
    path = Path(path)
    example = example_input(graph, 2, "cpu", channels_last=False)
    tried: list[str] = []
    orders = {"auto": ("torchscript", "dynamo"), "torchscript": ("torchscript",)}
    orders["dynamo"] = ("dynamo",)
    if exporter not in orders:
        raise OnnxError(f"ONNX exporter {exporter!r}; choose one of {', '.join(orders)}")
    order = orders[exporter]
    used = None
    for name in order:
        sink = io.StringIO()
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
                torch.no_grad(),
            ):
                warnings.simplefilter("ignore")
                (_export_dynamo if name == "dynamo" else _export_legacy)(graph, example, path)
            onnx.checker.check_model(str(path), full_check=True)
            _check_answers(graph, path, check_batch)
        except Exception as err:  # each exporter fails in its own ways; the next one is tried
            tried.append(f"{name}: {first_line(err)}")
            path.unlink(missing_ok=True)
            continue
        used = name
        break
    if used is None:
        raise OnnxError(
            f"{fused.kind} {fused.size}²: no ONNX exporter could write the fused graph "
            f"({'; '.join(tried)}); export --backend torchscript instead"
        )
    return {
        "exporter": used,
        "opset": OPSET,
        "outputs": _output_names(graph),
        "fallback_from": tried or None,
    }


def describe(path: str | Path) -> dict[str, Any]:
    """What `to_onnx` returned, read back from a file it wrote (its producer and outputs)."""
    require("onnx")
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    producer = f"{model.producer_name} {model.producer_version}".strip()
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {
        "exporter": "file",  # the file does not say which torch.onnx exporter wrote it
        "opset": opset,
        "outputs": [o.name for o in model.graph.output],
        "producer": producer,
    }


def _check_answers(graph: Fused, path: Path, batch: int) -> None:
    x = example_input(graph, batch, "cpu", channels_last=False)
    with torch.inference_mode():
        want = graph(x)
    got = onnxruntime_module(path, threads=1)(x)
    if not torch.allclose(got[0], want[0], atol=1e-4, rtol=0):
        raise OnnxError(f"ONNX outputs differ from eager at batch {batch}")
    if not torch.equal(got[1], want[1]):
        raise OnnxError(f"ONNX areas differ from eager at batch {batch}")


# ---------------------------------------------------------------------------------- runtimes


class _Session:
    """Shared shape of the two runtime wrappers: numpy in, a tuple of torch tensors out."""

    runtime = ""
    outputs: list[str]
    info: dict[str, Any]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in self._run(a))

    def _run(self, a: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class _OnnxRuntime(_Session):
    runtime = "onnxruntime"

    def __init__(self, path: Path, providers: list[str], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.info = {
            "runtime": "onnxruntime",
            "providers": self.session.get_providers(),
            "threads": threads,
        }

    def _run(self, a: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.outputs, {INPUT_NAME: a})


def ort_providers(device: str = "cpu") -> list[str]:
    """Execution providers for `device`: TensorRT, then CUDA, where onnxruntime has them and a
    GPU is asked for; the CPU provider always last (it runs what the others do not take)."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if device != "cpu" else []
    return [p for p in wanted if p in have] + ["CPUExecutionProvider"]


def onnxruntime_module(
    path: str | Path, *, device: str = "cpu", threads: int | None = None
) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """An ONNX Runtime session over `path` with the fused module's call signature."""
    require("onnxruntime")
    threads = threads or torch.get_num_threads()
    try:
        return _OnnxRuntime(Path(path), ort_providers(device), threads)
    except Exception as err:
        raise OnnxError(
            f"onnxruntime cannot load {path} ({first_line(err)}); re-export it"
        ) from None


class _OpenVino(_Session):
    runtime = "openvino"

    def __init__(self, path: Path, precision: str, hint: str, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        config = {
            "PERFORMANCE_HINT": hint,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads,
        }
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self._results: dict[int, list[np.ndarray]] = {}
        self.queue.set_callback(self._done)
        # Scoring lanes may call from several threads; the requests already run in parallel,
        # so one batch at a time keeps the queue and its results apart.
        self._lock = threading.Lock()
        self.info = {
            "runtime": "openvino",
            "device": "CPU",
            "performance_hint": hint,
            # What the CPU plugin runs in: "bf16" only where the CPU has bf16 units; it falls
            # back to "f32" elsewhere whatever the hint asked for.
            "inference_precision": _type_name(
                self.compiled.get_property("INFERENCE_PRECISION_HINT")
            ),
            "requests": self.requests,
            "threads": threads,
        }

    def _done(self, request, key: int) -> None:
        self._results[key] = [
            request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))
        ]

    def _run(self, a: np.ndarray) -> list[np.ndarray]:
        # One slice of the batch per infer request: the requests run as parallel streams.
        parts = np.array_split(a, min(self.requests, len(a))) if len(a) else [a]
        with self._lock:
            self._results.clear()
            for i, part in enumerate(parts):
                self.queue.start_async({0: np.ascontiguousarray(part)}, i)
            self.queue.wait_all()
            chunks = [self._results[i] for i in range(len(parts))]
        return [np.concatenate([c[j] for c in chunks]) for j in range(len(self.outputs))]


def openvino_module(
    path: str | Path,
    *,
    precision: str = "fp32",
    hint: str = "THROUGHPUT",
    threads: int | None = None,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """An OpenVINO CPU model over `path` (fp32, or bf16 by inference-precision hint) with the
    fused module's call signature; `hint` THROUGHPUT (several requests) or LATENCY (one)."""
    require("openvino")
    if precision not in ("fp32", "bf16"):
        raise OnnxError(f"openvino runs fp32 or bf16 on the CPU, not {precision}")
    if hint not in ("THROUGHPUT", "LATENCY"):
        raise OnnxError(f"openvino performance hint {hint!r}; choose THROUGHPUT or LATENCY")
    threads = threads or torch.get_num_threads()
    try:
        return _OpenVino(Path(path), precision, hint, threads)
    except Exception as err:
        raise OnnxError(f"openvino cannot load {path} ({first_line(err)}); re-export it") from None


def _type_name(value: Any) -> str:
    name = getattr(value, "get_type_name", None)
    return str(name() if callable(name) else value)


__all__ = [
    "INPUT_NAME",
    "OPSET",
    "OUTPUT_NAMES",
    "RUNTIMES",
    "OnnxError",
    "describe",
    "onnxruntime_module",
    "openvino_module",
    "ort_providers",
    "require",
    "to_onnx",
    "unavailable_reason",
    "versions",
]
