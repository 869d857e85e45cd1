"""The runtime: make a `Predictor` from an exported artifact or, on the fly, from a model.

- `load_predictor(artifact)` runs an exported artifact (its validated `ArtifactSpec`) after
  checking its sha256, through its backend's `load` in the registry.
- `build_predictor(backend, model)` makes one on the fly (benchmarks) through the backend's
  `build`: `eager` (fp32, or autocast fp16 on CUDA / bf16), `torchscript` (traced, frozen,
  channels_last; fp32 / fp16 / bf16; on the CPU rewritten onto fused oneDNN convolutions,
  `ptxfast.inference.cpu_fusion.fuse_for_cpu`), `tensorrt` (FP16 via Torch-TensorRT), `inductor`
  (`torch.compile`), `onnxruntime` and `openvino` (the fused graph exported to ONNX,
  `ptxfast.inference.onnx_graph`; OpenVINO fp32 or bf16).
- `available_backends(device)` (`ptxfast.inference.backends`, the registry) says which can run
  here and, for the others, what is missing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ptxfast import MODEL_NAMES
from ptxfast.environment import resolve_device
from ptxfast.errors import PtxfastError, first_line
from ptxfast.inference.artifact import ArtifactError, ArtifactSpec, read_sidecar, verify
from ptxfast.inference.backends import (
    BACKENDS,
    PredictorError,
    Request,
    available_backends,
    backend,
    check_precision,
    require_backend,
)
from ptxfast.inference.cpu_fusion import (
    cpu_fusion_available,
    fuse_for_cpu,
    is_cpu_fused,
    torch_mismatch,
)
from ptxfast.inference.fused import DTYPE_NAMES, PRECISIONS, quiet_jit
from ptxfast.inference.operating import label_rule
from ptxfast.inference.predictor import Outputs, Predictor, pad_batch

# ------------------------------------------------------------------------------------ artifacts


def _artifact_device(spec: ArtifactSpec, device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        if spec.device.startswith("cuda") and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return resolve_device(device)


def load_predictor(
    artifact: str | Path | ArtifactSpec,
    device: str | torch.device | None = "auto",
    *,
    optimize: bool = False,
    cpu_fusion: bool = True,
) -> Predictor:
    """A predictor for an exported artifact (its model file or sidecar), after its sha256 check.

    device "auto": the device type the artifact was exported for when it is here, else the CPU.
    TorchScript files load with `torch.jit.load`. CPU artifacts are exported with their
    convolutions already fused onto oneDNN (`ptxfast.inference.cpu_fusion.fuse_for_cpu`) and run
    only under the torch release that fused them (the sidecar's `cpu_fusion.torch`; another one
    is refused: re-export); one exported unfused is rewritten here on load when it runs on the
    CPU (`cpu_fusion`, on by default: exact in fp32 and faster in every case measured).
    `optimize` also applies `torch.jit.optimize_for_inference` (TorchScript only; its result
    cannot be saved, so it is a load-time choice; on a fused graph it measured no faster, so it
    stays off by default). TensorRT ones need torch-tensorrt and a GPU.
    """
    spec = artifact if isinstance(artifact, ArtifactSpec) else read_sidecar(artifact)
    file = verify(spec)
    dev = _artifact_device(spec, device)
    _require_runnable(spec, file, dev)
    module = _load_module(spec, file, dev)
    torchscript = spec.backend == "torchscript"
    if torchscript:
        module = _ready_torchscript(module, spec, file, dev, optimize, cpu_fusion)
    return Predictor(
        module,
        name=spec.name,
        size=spec.size,
        backend=spec.backend,
        precision=spec.precision,
        device=dev,
        input_dtype=getattr(torch, spec.input_dtype),
        batch=spec.batch,
        return_mask=spec.return_mask,
        channels_last=spec.channels_last,
        path=spec.build_path + ("+optimized" if optimize and torchscript else ""),
        sidecar=spec,
        rule=label_rule(spec),
        thresholds=dict(spec.thresholds),
        mask_output=spec.mask_output,
    )


def _require_runnable(spec: ArtifactSpec, file: Path, dev: torch.device) -> None:
    """Refuse, before loading, an artifact this machine or this torch cannot run."""
    runtime = BACKENDS[spec.backend]
    reason = runtime.refusal(dev)
    if reason is not None:
        raise PredictorError(f"{file} is {runtime.title}: {reason}")
    if spec.precision == "fp16" and dev.type != "cuda":
        raise PredictorError(
            f"{file} is an fp16 artifact for CUDA GPUs and this device is {dev}; run it on a GPU "
            f"or export a CPU one (ptxfast export {spec.export_option} {spec.name} "
            "--profile cpu-fp32)"
        )
    _refuse_other_torch(spec, file, spec.fused_by_torch)


def _refuse_other_torch(spec: ArtifactSpec, file: Path, recorded: str | None) -> None:
    reason = torch_mismatch(recorded)
    if reason is not None:
        raise PredictorError(f"{file} was {reason}; re-export it (`{spec.export_command}`)")


def _load_module(spec: ArtifactSpec, file: Path, dev: torch.device):
    """The artifact's runnable module; unreadable files as ArtifactError (re-export)."""
    try:
        return BACKENDS[spec.backend].load(
            file, dev, path=spec.build_path, precision=spec.precision, runtime=spec.runtime
        )
    except PtxfastError:  # a missing runtime, an ONNX file its runtime refuses: said already
        raise
    except (RuntimeError, ValueError, OSError) as err:
        raise ArtifactError(
            f"{file} could not be loaded ({first_line(err)}); re-export it"
        ) from None


def _ready_torchscript(
    module: torch.jit.ScriptModule,
    spec: ArtifactSpec,
    file: Path,
    dev: torch.device,
    optimize: bool,
    cpu_fusion: bool,
) -> torch.jit.ScriptModule:
    """A loaded TorchScript artifact checked for `dev`, CPU-fused when it is not yet (and
    `cpu_fusion`), optimized on request."""
    if is_cpu_fused(module):
        if dev.type != "cpu":
            raise PredictorError(
                f"{file} was exported for the CPU (its convolutions are oneDNN kernels) and cannot "
                f"run on {dev}; export it for {dev.type} (ptxfast export ... --device {dev.type})"
            )
        _refuse_other_torch(spec, file, spec.torch_if_fused)  # older sidecars: versions.torch
    try:
        if cpu_fusion and dev.type == "cpu" and cpu_fusion_available():
            example = torch.rand(1, 1, spec.size, spec.size).to(getattr(torch, spec.input_dtype))
            if spec.channels_last:
                example = example.contiguous(memory_format=torch.channels_last)
            compute = PRECISIONS.get(spec.precision, example.dtype)
            fuse_for_cpu(module, example, compute)  # a no-op on an artifact fused at export
        if optimize:
            with quiet_jit():
                module = torch.jit.optimize_for_inference(module)
    except RuntimeError as err:
        raise ArtifactError(
            f"{file} could not be optimized for {dev} ({first_line(err)}); "
            "load it with cpu_fusion=False, optimize=False"
        ) from None
    return module


# ----------------------------------------------------------------------------------- on the fly


def _model_and_name(
    model_or_checkpoint: nn.Module | str | Path, name: str | None, seed: int
) -> tuple[nn.Module, str, int | None]:
    """(fp32 eval model, name, training size or None) from a module, a checkpoint or a name."""
    from ptxfast.checkpoint import model_from_checkpoint
    from ptxfast.models import build

    if isinstance(model_or_checkpoint, nn.Module):
        if name is None:
            raise PredictorError("build_predictor(model) needs name= (one of the eight models)")
        return model_or_checkpoint.eval(), name, None
    text = str(model_or_checkpoint)
    if text in MODEL_NAMES:  # random init: benchmarks of speed need no training
        torch.manual_seed(seed)
        return build(text, weights=None).eval(), text, None
    model, state = model_from_checkpoint(text)
    return model, state["model_args"]["name"], int(state["model_args"].get("size", 0)) or None


def build_predictor(
    backend_name: str,
    model_or_checkpoint: nn.Module | str | Path,
    *,
    name: str | None = None,
    size: int | None = None,
    precision: str = "fp32",
    device: str | torch.device | None = "auto",
    batch: tuple[int, int, int] = (1, 8, 32),
    return_mask: bool = False,
    channels_last: bool = True,
    check_trace: bool = True,
    optimize: bool = False,
    cpu_fusion: bool = True,
    seed: int = 0,
    onnx_file: str | Path | None = None,
    inductor_mode: str | None = None,
    dynamic: bool | None = False,
) -> Predictor:
    """Make a predictor on the fly from a model, a checkpoint path or a model name (random init).

    backend: eager (fp32; fp16/bf16 by autocast), torchscript (traced + frozen at `precision`),
    tensorrt (fp16 or fp32 engine, dynamic batch over `batch`), inductor (torch.compile; mode
    max-autotune-no-cudagraphs on GPU, the default on CPU), onnxruntime, openvino. `size`
    defaults to the checkpoint's. `optimize`: torchscript only,
    `torch.jit.optimize_for_inference` on the frozen graph. `cpu_fusion`: torchscript on the
    CPU, rewrite the frozen graph onto fused oneDNN convolutions
    (`ptxfast.inference.cpu_fusion.fuse_for_cpu`; off only to measure what it brings).
    `onnx_file` (onnxruntime / openvino): run this ONNX export of the same model when it
    exists, else export there, so several runtimes share one export; None: a temporary file.
    `inductor_mode` (inductor): a torch.compile mode ("default", "max-autotune", ...) instead
    of the choice above; `dynamic`: torch.compile's (None: automatic dynamic shapes, so several
    batch sizes share one graph). Other backends ignore the options that are not theirs.
    """
    dev = resolve_device(device)
    runtime = require_backend(backend_name, dev)
    check_precision(backend_name, precision, dev)
    model, name, trained_size = _model_and_name(model_or_checkpoint, name, seed)
    size = size or trained_size
    if not size:
        raise PredictorError(f"build_predictor({name}) needs size= (no checkpoint to read it from)")
    req = Request(
        name, size, precision, dev, batch, return_mask, channels_last, check_trace=check_trace,
        optimize=optimize, cpu_fusion=cpu_fusion,
        onnx_file=Path(onnx_file) if onnx_file else None, inductor_mode=inductor_mode,
        dynamic=dynamic,
    )  # fmt: skip
    built = runtime.build(model, req)
    options = dict(
        name=name, size=size, backend=backend_name, precision=precision, device=dev, batch=batch,
        return_mask=return_mask, channels_last=channels_last,
    )  # fmt: skip
    return Predictor(built.module, path=built.path, **{**options, **built.options})


__all__ = [
    "BACKENDS",
    "DTYPE_NAMES",
    "Outputs",
    "Predictor",
    "PredictorError",
    "available_backends",
    "backend",
    "build_predictor",
    "check_precision",
    "load_predictor",
    "pad_batch",
    "require_backend",
    "resolve_device",
]
