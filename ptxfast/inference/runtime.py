"""The runtime: one `Predictor` over every backend, so scoring and benchmarks run any of them alike.

A predictor takes a float32 batch N×1×S×S in [0, 1] (on the CPU or its device) and returns
`Outputs(prob, area, mask)` on its device: the image probability (float32 N), the mask area above
PIXEL_THRESHOLD (int32 N, -1 for classifiers) and the mask (float32 N×1×S×S) when the model was
fused with `return_mask`. It moves and casts the input itself (non_blocking, channels_last).

- `load_predictor(artifact)` runs an exported artifact after checking its sha256.
- `build_predictor(backend, model)` makes one on the fly (benchmarks): `eager` (fp32, or autocast
  fp16 on CUDA / bf16), `torchscript` (traced, frozen, channels_last; fp32 / fp16 / bf16; on the
  CPU rewritten onto fused oneDNN convolutions, `ptxfast.inference.cpu_fusion.fuse_for_cpu`),
  `tensorrt` (FP16 via Torch-TensorRT), `inductor` (`torch.compile`), `onnxruntime` and
  `openvino` (the fused graph exported to ONNX, `ptxfast.inference.onnx_graph`; OpenVINO fp32 or bf16).
- `available_backends(device)` (`ptxfast.inference.backends`) says which can run here and, for the
  others, what is missing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ptxfast import MODEL_NAMES
from ptxfast.environment import DeviceError, resolve_device
from ptxfast.inference.artifact import ArtifactError, Sidecar, read_sidecar, verify
from ptxfast.inference.backends import (
    BACKENDS,
    ONNX_BACKENDS,
    PredictorError,
    available_backends,
    check_precision,
    require_backend,
)
from ptxfast.inference.cpu_fusion import (
    cpu_fusion_available,
    fuse_for_cpu,
    is_cpu_fused,
    torch_mismatch,
)
from ptxfast.inference.fused import (
    DTYPE_NAMES,
    PRECISIONS,
    fuse,
    input_dtype,
    quiet_jit,
    to_torchscript,
)
from ptxfast.inference.operating import LabelRule, label_rule
from ptxfast.models import kind_of
from ptxfast.models import thresholds as model_thresholds


class Outputs(NamedTuple):
    """What a predictor returns for a batch of N images, on the predictor's device."""

    prob: torch.Tensor  # float32 N: image probability (label = prob > thresholds["label"])
    area: torch.Tensor  # int32 N: mask pixels above PIXEL_THRESHOLD; -1 for classifiers
    mask: torch.Tensor | None = None  # float32 N×1×S×S mask probability (return_mask only)


def pad_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """`x` (N×…) grown to `n` rows by repeating its last image (a real image, so padded rows
    take the same path through every kernel); `x` itself when it has `n` rows or more.
    Compiled graphs and engines specialise on batch shapes: padding a short last batch up to
    the run's batch size avoids a recompile (a TorchScript fuser spent seconds on a last batch
    of 16 after 32s) and meets an engine's smallest batch."""
    if x.shape[0] >= n:
        return x
    return torch.cat([x, x[-1:].expand(n - x.shape[0], *x.shape[1:])])


class Predictor:
    """A model ready to score batches: `predictor(x) -> Outputs`, plus what it is.

    Attributes: name, kind, size, backend, precision, device, input_dtype, thresholds (label,
    pixel, min_area, score_k: an artifact's from its sidecar, else the model's rule at `size`),
    batch ((min, opt, max) or None), return_mask, channels_last, path (how it was made: trace,
    ts, dynamo, eager, inductor, onnx:<exporter>), sidecar (artifacts only), mask_output (the
    module returns a mask, whether or not `return_mask` hands it to callers: ONNX graphs always
    carry it, so the parity gate measures Dice), rule (`operating.LabelRule`: the artifact's
    operating point, else the model's default threshold; `label` and `reported` apply it).
    """

    def __init__(
        self,
        module: Callable[[torch.Tensor], Any],
        *,
        name: str,
        size: int,
        backend: str,
        precision: str,
        device: torch.device,
        input_dtype: torch.dtype = torch.float32,
        batch: tuple[int, int, int] | None = None,
        return_mask: bool = False,
        channels_last: bool = True,
        autocast_dtype: torch.dtype | None = None,
        path: str = "",
        sidecar: Sidecar | None = None,
        mask_output: bool | None = None,
        rule: LabelRule | None = None,
        thresholds: dict[str, float | int | None] | None = None,
    ) -> None:
        self.module = module
        self.name = name
        self.kind = kind_of(name)
        self.size = size
        self.backend = backend
        self.precision = precision
        self.device = device
        self.input_dtype = input_dtype
        # An artifact's are its sidecar's (what the export gate measured); else the model's rule.
        self.thresholds = dict(thresholds) if thresholds else model_thresholds(self.kind, size)
        self.rule = rule or LabelRule(float(self.thresholds["label"]))
        # The cut on the raw probability (the operating point's, when there is one).
        self.thresholds["label"] = self.rule.raw_threshold
        self.batch, self.return_mask, self.channels_last = batch, return_mask, channels_last
        self.autocast_dtype, self.path, self.sidecar = autocast_dtype, path, sidecar
        self.mask_output = return_mask if mask_output is None else mask_output
        # TensorRT engines hold a fixed batch range; other backends take any batch.
        self._strict_batch = backend == "tensorrt" and batch is not None

    def __repr__(self) -> str:
        return (
            f"Predictor({self.name}, {self.backend}/{self.path}, {self.precision}, "
            f"{self.size}², {self.device})"
        )

    def label(self, prob: torch.Tensor) -> torch.Tensor:
        """The image label (bool) of the raw probabilities the model returns, by its rule."""
        return self.rule.label(prob)

    def reported(self, prob: torch.Tensor) -> torch.Tensor:
        """The probability to report for raw ones: temperature-scaled when the artifact's
        operating point is calibrated, else unchanged."""
        return self.rule.reported(prob)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        s = self.size
        if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[-2:]) != (s, s):
            raise PredictorError(
                f"{self.name} takes N×1×{s}×{s} images in [0, 1], got shape {tuple(x.shape)}; "
                f"resize to {s}×{s} (ptxfast.data.dicom.load_image(path, size={s}))"
            )
        x = x.to(self.device, non_blocking=True)
        if x.dtype != self.input_dtype:
            x = x.to(self.input_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _run(self, x: torch.Tensor, with_mask: bool) -> Outputs:
        out = self.module(x)
        if isinstance(out, torch.Tensor):  # a bare module returns logits; predictors never do
            raise PredictorError(f"{self.name}: the module returned one tensor, not (prob, area)")
        mask = out[2] if len(out) > 2 and with_mask else None
        return Outputs(out[0].float(), out[1], mask)

    def __call__(self, x: torch.Tensor, with_mask: bool | None = None) -> Outputs:
        """Score a batch: x is N×1×S×S in [0, 1], float32 (or already `input_dtype`).

        `with_mask` (default `return_mask`) asks for the mask; True needs `mask_output`."""
        with_mask = self.return_mask if with_mask is None else with_mask
        if with_mask and not self.mask_output:
            raise PredictorError(f"{self!r} returns no mask; export it with --return-mask")
        x = self._prepare(x)
        with torch.inference_mode(), self._autocast():
            if not self._strict_batch:
                return self._run(x, with_mask)
            lo, _, hi = self.batch
            parts = []
            for chunk in x.split(hi):
                n = chunk.shape[0]
                if n < lo:  # pad up to the engine's smallest batch, drop the padding after
                    chunk = pad_batch(chunk, lo).contiguous(memory_format=torch.channels_last)
                out = self._run(chunk, with_mask)
                parts.append(Outputs(*(t[:n] if t is not None else None for t in out)))
            if len(parts) == 1:
                return parts[0]
            mask = torch.cat([p.mask for p in parts]) if parts[0].mask is not None else None
            return Outputs(
                torch.cat([p.prob for p in parts]), torch.cat([p.area for p in parts]), mask
            )

    def warmup(self, batch: int | None = None, iters: int = 2) -> None:
        """Run a few random batches (compiles lazy backends, fills caches)."""
        n = batch or (self.batch[1] if self.batch else 1)
        x = torch.rand(n, 1, self.size, self.size)
        for _ in range(iters):
            self(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ------------------------------------------------------------------------------------ artifacts


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _artifact_device(sidecar: Sidecar, device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        wanted = str(sidecar.get("device", "cpu"))
        if wanted.startswith("cuda") and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return resolve_device(device)


def load_predictor(
    artifact: str | Path | Sidecar,
    device: str | torch.device | None = "auto",
    *,
    optimize: bool = False,
    cpu_fusion: bool = True,
) -> Predictor:
    """A predictor for an exported artifact (its model file or sidecar), after its sha256 check.

    device "auto": the device type the artifact was exported for when it is here, else the CPU.
    TorchScript files load with `torch.jit.load`. CPU artifacts are exported with their
    convolutions already fused onto oneDNN (`ptxfast.inference.cpu_fusion.fuse_for_cpu`) and run only under
    the torch release that fused them (the sidecar's `cpu_fusion.torch`; another one is refused:
    re-export); one exported unfused is rewritten here on load when it runs on the CPU
    (`cpu_fusion`, on by default: exact in fp32 and faster in every case measured). `optimize`
    also applies `torch.jit.optimize_for_inference` (TorchScript only; its result cannot be
    saved, so it is a load-time choice; on a fused graph it measured no faster, so it stays off
    by default). TensorRT ones need torch-tensorrt and a GPU.
    """
    sidecar = artifact if isinstance(artifact, Sidecar) else read_sidecar(artifact)
    file = verify(sidecar)
    dev = _artifact_device(sidecar, device)
    _require_runnable(sidecar, file, dev)
    module = _load_module(sidecar, file, dev)
    torchscript = sidecar["backend"] == "torchscript"
    if torchscript:
        module = _ready_torchscript(module, sidecar, file, dev, optimize, cpu_fusion)
    b, size = sidecar["batch"], int(sidecar["input"]["size"])
    return Predictor(
        module,
        name=sidecar["name"],
        size=size,
        backend=sidecar["backend"],
        precision=sidecar["precision"]["requested"],
        device=dev,
        input_dtype=getattr(torch, sidecar["input"]["dtype"]),
        batch=(int(b["min"]), int(b["opt"]), int(b["max"])),
        return_mask=bool(sidecar["return_mask"]),
        channels_last=bool(sidecar["input"].get("channels_last", True)),
        path=sidecar["path"] + ("+optimized" if optimize and torchscript else ""),
        sidecar=sidecar,
        rule=label_rule(sidecar),
        thresholds=sidecar["thresholds"],
        mask_output="mask" in (sidecar.get("onnx") or {}).get("outputs", ())
        or bool(sidecar["return_mask"]),
    )


def _require_runnable(sidecar: Sidecar, file: Path, dev: torch.device) -> None:
    """Refuse, before loading, an artifact this machine or this torch cannot run."""
    backend, precision = sidecar["backend"], sidecar["precision"]["requested"]
    if backend == "tensorrt":
        from ptxfast.inference import trt

        reason = trt.unavailable_reason(dev)
        if reason is not None:
            raise PredictorError(f"{file} is a TensorRT artifact: {reason}")
    elif backend in ONNX_BACKENDS:
        reason = available_backends(dev)[backend]
        if reason is not None:
            raise PredictorError(f"{file} is an ONNX artifact for {backend}: {reason}")
    elif precision == "fp16" and dev.type != "cuda":
        flag = "cascade" if sidecar["kind"] == "cascade" else "model"
        raise PredictorError(
            f"{file} is an fp16 artifact for CUDA GPUs and this device is {dev}; run it on a GPU "
            f"or export a CPU one (ptxfast export --{flag} {sidecar['name']} --profile cpu-fp32)"
        )
    _refuse_other_torch(sidecar, file, (sidecar.get("cpu_fusion") or {}).get("torch"))


def _refuse_other_torch(sidecar: Sidecar, file: Path, recorded: str | None) -> None:
    reason = torch_mismatch(recorded)
    if reason is not None:
        raise PredictorError(f"{file} was {reason}; re-export it (`{sidecar.export_command}`)")


def _load_module(sidecar: Sidecar, file: Path, dev: torch.device):
    """The artifact's runnable module; unreadable files as ArtifactError (re-export)."""
    backend = sidecar["backend"]
    try:
        if backend == "tensorrt":
            from ptxfast.inference import trt

            return trt.load(file, sidecar["path"], dev)
        if backend in ONNX_BACKENDS:
            precision = sidecar["precision"]["requested"]
            return onnx_module(backend, file, precision, sidecar.get("runtime") or {}, dev)
        with quiet_jit():
            return torch.jit.load(str(file), map_location=dev).eval()
    except (PredictorError, DeviceError):
        raise
    except (RuntimeError, ValueError, OSError) as err:
        raise ArtifactError(
            f"{file} could not be loaded ({_first_line(err)}); re-export it"
        ) from None


def _ready_torchscript(
    module: torch.jit.ScriptModule,
    sidecar: Sidecar,
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
        if "cpu_fusion" not in sidecar:  # exported before sidecars named the fusing torch
            _refuse_other_torch(sidecar, file, sidecar["versions"].get("torch"))
    try:
        if cpu_fusion and dev.type == "cpu" and cpu_fusion_available():
            size = int(sidecar["input"]["size"])
            example = torch.rand(1, 1, size, size).to(getattr(torch, sidecar["input"]["dtype"]))
            if sidecar["input"].get("channels_last", True):
                example = example.contiguous(memory_format=torch.channels_last)
            compute = PRECISIONS.get(sidecar["precision"]["requested"], example.dtype)
            fuse_for_cpu(module, example, compute)  # a no-op on an artifact fused at export
        if optimize:
            with quiet_jit():
                module = torch.jit.optimize_for_inference(module)
    except RuntimeError as err:
        raise ArtifactError(
            f"{file} could not be optimized for {dev} ({_first_line(err)}); "
            "load it with cpu_fusion=False, optimize=False"
        ) from None
    return module


def onnx_module(
    backend: str, file: Path, precision: str, runtime: dict[str, Any], device: torch.device
):
    """The runtime callable over an ONNX file (`ptxfast.inference.onnx_graph`); errors as PredictorError."""
    from ptxfast.inference import onnx_graph

    try:
        if backend == "onnxruntime":
            return onnx_graph.onnxruntime_module(file, device=device.type)
        hint = str(runtime.get("performance_hint") or "THROUGHPUT")
        return onnx_graph.openvino_module(file, precision=precision, hint=hint)
    except onnx_graph.OnnxError as err:
        raise PredictorError(str(err)) from None


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
    backend: str,
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
    max-autotune-no-cudagraphs on GPU, the default on CPU). `size` defaults to the checkpoint's.
    `optimize`: torchscript only, `torch.jit.optimize_for_inference` on the frozen graph.
    `cpu_fusion`: torchscript on the CPU, rewrite the frozen graph onto fused oneDNN convolutions
    (`ptxfast.inference.cpu_fusion.fuse_for_cpu`; off only to measure what it brings). `onnx_file`
    (onnxruntime / openvino): run this ONNX export of the same model when it exists, else
    export there, so several runtimes share one export; None: a temporary file.
    `inductor_mode` (inductor): a torch.compile mode ("default", "max-autotune", ...) instead of
    the choice above; `dynamic`: torch.compile's (None: automatic dynamic shapes, so several
    batch sizes share one graph).
    """
    dev = resolve_device(device)
    require_backend(backend, dev)
    check_precision(backend, precision, dev)
    model, name, trained_size = _model_and_name(model_or_checkpoint, name, seed)
    size = size or trained_size
    if not size:
        raise PredictorError(f"build_predictor({name}) needs size= (no checkpoint to read it from)")
    common = dict(
        name=name, size=size, backend=backend, precision=precision, device=dev, batch=batch,
        return_mask=return_mask, channels_last=channels_last,
    )  # fmt: skip
    if backend == "eager":
        fused = fuse(
            model, name, size, device=dev, return_mask=return_mask, channels_last=channels_last
        )
        amp = None if precision == "fp32" else PRECISIONS[precision]
        return Predictor(fused, autocast_dtype=amp, path="eager", **common)
    if backend in ONNX_BACKENDS:
        return _onnx_predictor(
            backend, model, name, size, precision, return_mask, common, onnx_file
        )
    fused = fuse(
        model,
        name,
        size,
        precision=precision,
        device=dev,
        return_mask=return_mask,
        channels_last=channels_last,
    )
    module, path = _compiled(
        backend, fused, batch, dev, channels_last=channels_last, check_trace=check_trace,
        optimize=optimize, cpu_fusion=cpu_fusion, inductor_mode=inductor_mode, dynamic=dynamic,
    )  # fmt: skip
    return Predictor(module, input_dtype=input_dtype(PRECISIONS[precision]), path=path, **common)


def _compiled(
    backend: str,
    fused: nn.Module,
    batch: tuple[int, int, int],
    dev: torch.device,
    *,
    channels_last: bool,
    check_trace: bool,
    optimize: bool,
    cpu_fusion: bool,
    inductor_mode: str | None,
    dynamic: bool | None,
) -> tuple[Callable[[torch.Tensor], Any], str]:
    """(module, path) of a fused model compiled by torchscript, tensorrt or inductor."""
    if backend == "torchscript":
        scripted = to_torchscript(
            fused, batch, dev, channels_last=channels_last, check=check_trace, cpu_fusion=cpu_fusion
        )
        if optimize:
            with quiet_jit():
                scripted = torch.jit.optimize_for_inference(scripted)
        return scripted, "trace+optimized" if optimize else "trace"
    if backend == "tensorrt":
        from ptxfast.inference import trt

        compiled = trt.compile_fused(
            fused, size=fused.size, batch=batch, device=dev, dtype=fused.dtype
        )
        return compiled.module, compiled.path
    mode = inductor_mode or ("max-autotune-no-cudagraphs" if dev.type == "cuda" else None)
    compiled = torch.compile(fused, mode=mode, dynamic=dynamic)
    return compiled, f"inductor:{inductor_mode}" if inductor_mode else "inductor"


def _onnx_predictor(
    backend: str,
    model: nn.Module,
    name: str,
    size: int,
    precision: str,
    return_mask: bool,
    common: dict[str, Any],
    onnx_file: str | Path | None = None,
) -> Predictor:
    """Export the fp32 fused graph to ONNX (or reuse `onnx_file`) and run it in `backend`."""
    import tempfile

    from ptxfast.inference import onnx_graph

    fused = fuse(model, name, size, device="cpu", return_mask=return_mask, channels_last=False)
    try:
        with tempfile.TemporaryDirectory(prefix="ptxfast-onnx-") as tmp:
            path = Path(onnx_file) if onnx_file else Path(tmp) / f"{name}.onnx"
            if path.is_file():
                info = onnx_graph.describe(path)
            else:
                info = onnx_graph.to_onnx(fused, path)
            module = onnx_module(backend, path, precision, {}, torch.device("cpu"))
    except onnx_graph.OnnxError as err:
        raise PredictorError(str(err)) from None
    common = {**common, "channels_last": False, "device": torch.device("cpu")}
    return Predictor(
        module, path=f"onnx:{info['exporter']}", mask_output="mask" in info["outputs"], **common
    )


__all__ = [
    "BACKENDS",
    "ONNX_BACKENDS",
    "DTYPE_NAMES",
    "Outputs",
    "Predictor",
    "PredictorError",
    "available_backends",
    "build_predictor",
    "check_precision",
    "load_predictor",
    "onnx_module",
    "require_backend",
    "resolve_device",
]
