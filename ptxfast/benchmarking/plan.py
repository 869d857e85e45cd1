"""The plan of a benchmark: which model (an artifact, a checkpoint or random init, at which
size), which variants (backend × precision) run on this device and which are listed with the
reason they do not, and how each variant's predictor is built."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptxfast import MODEL_NAMES
from ptxfast.benchmarking.config import CPU_DEFAULTS, GPU_DEFAULTS, BenchConfig, BenchError
from ptxfast.benchmarking.results import first_line
from ptxfast.environment import cpu_bf16
from ptxfast.inference.spec import ArtifactSpec

__all__ = [
    "CPU_INDUCTOR_SKIP",
    "DEFAULT_CPU",
    "DEFAULT_GPU",
    "NO_BF16_SKIP",
    "VARIANTS",
    "Source",
    "Unavailable",
    "build_variant",
    "plan_variants",
    "resolve_source",
]

# variant name -> (backend, precision). "artifact" (an exported file) is added when one is given.
VARIANTS: dict[str, tuple[str, str]] = {
    "eager": ("eager", "fp32"),
    "eager-fp16": ("eager", "fp16"),
    "eager-bf16": ("eager", "bf16"),
    "torchscript": ("torchscript", "fp32"),
    "torchscript-fp16": ("torchscript", "fp16"),
    "torchscript-bf16": ("torchscript", "bf16"),
    "inductor": ("inductor", "fp32"),
    "inductor-fp16": ("inductor", "fp16"),
    "inductor-bf16": ("inductor", "bf16"),
    "tensorrt": ("tensorrt", "fp16"),
    "tensorrt-fp32": ("tensorrt", "fp32"),
    "onnxruntime": ("onnxruntime", "fp32"),
    "openvino": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
}
DEFAULT_GPU = ("eager", "eager-fp16", "torchscript", "torchscript-fp16", "inductor", "tensorrt")
DEFAULT_CPU = (
    "eager", "eager-bf16", "torchscript", "torchscript-bf16", "onnxruntime", "openvino",
    "openvino-bf16", "inductor", "tensorrt",
)  # fmt: skip
# Compiling a cascade with inductor on a few CPU cores takes many minutes (more than 7 at 128²
# on 2 cores here), so the CPU default lists it as skipped instead of running it.
CPU_INDUCTOR_SKIP = (
    "left out of the CPU default: compiling the model takes minutes on a CPU; "
    "ask for it with --backends inductor"
)
NO_BF16_SKIP = (
    "left out of the default: this CPU has no bf16 units, so bf16 runs emulated (slow); "
    "ask for it with --backends"
)


class Unavailable(Exception):
    """A variant that cannot be built here, for a reason that is not an error."""


# ------------------------------------------------------------------------------ the model


@dataclass
class Source:
    """The model to time: a name and size, the fp32 model for on-the-fly variants (None when
    only an artifact is there), the artifact's sidecar, and the dataset it was trained on."""

    name: str
    size: int
    model: torch.nn.Module | None
    sidecar: Any
    weights: str  # "checkpoint <path>", "random init", ...
    trained_on: Path | None
    no_model: str | None = None  # why on-the-fly variants cannot be built
    # One ONNX export that the onnxruntime and openvino variants share (made by the first).
    onnx_dir: Any = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        """The report's "model": name, size, weights, artifact."""
        artifact = str(self.sidecar.path) if self.sidecar is not None else None
        return {"name": self.name, "size": self.size, "weights": self.weights, "artifact": artifact}


def _load_checkpoint_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    from ptxfast.checkpoint import CheckpointError, model_from_checkpoint

    try:
        return model_from_checkpoint(path)
    except (CheckpointError, RuntimeError, KeyError) as err:
        raise BenchError(f"{path}: {first_line(err)}; retrain or re-export it") from None


def _data_dir(recipe: dict[str, Any] | None) -> Path | None:
    data = (recipe or {}).get("data")
    return Path(data) if data and Path(data).is_dir() else None


def _random_init(name: str, size: int, seed: int) -> Source:
    from ptxfast.models import build

    torch.manual_seed(seed)
    return Source(name, size, build(name, weights=None).eval(), None, "random init", None)


def resolve_source(cfg: BenchConfig, gpu: bool, say: Callable[[str], None]) -> Source:
    """The model `cfg` names: its artifact (`model`), its checkpoint (`name`, from `runs`), or
    without either the newest export in `exports`, else eb3un+eb3 at random init."""
    from ptxfast.inference.artifact import list_artifacts, read_sidecar

    if cfg.model is not None and cfg.name is not None:
        raise BenchError("give --model ARTIFACT or --cascade NAME, not both")
    default_size = (GPU_DEFAULTS if gpu else CPU_DEFAULTS)["size"]
    if cfg.model is not None:
        return _from_sidecar(read_sidecar(cfg.model), cfg, say)
    if cfg.name is not None:
        return _from_name(cfg, default_size, say)
    found = list_artifacts(cfg.exports)  # a damaged newest sidecar stops here, named
    if not found:
        size = cfg.size or default_size
        say(
            f"no --model, --cascade or export in {cfg.exports}: eb3un+eb3 at random init "
            f"({size}²) on synthetic phantoms in memory — speed figures; parity compares "
            "the backends on untrained weights"
        )
        return _random_init("eb3un+eb3", size, cfg.seed)
    sidecar = found[-1]
    say(f"no --model or --cascade: benchmarking the newest export, {sidecar.path}")
    return _from_sidecar(sidecar, cfg, say)


def _from_sidecar(sidecar: ArtifactSpec, cfg: BenchConfig, say: Callable[[str], None]) -> Source:
    """An artifact, with the checkpoint it was exported from when that is still here."""
    size = sidecar.size
    if cfg.size and cfg.size != size:
        raise BenchError(
            f"{sidecar.model_path} runs at {size}², not --size {cfg.size}; drop --size or "
            f"export at {cfg.size}"
        )
    ckpt = sidecar.checkpoint or Path("")
    model, no_model, weights = None, None, f"artifact {sidecar.model_path}"
    if ckpt.is_file():
        model, _ = _load_checkpoint_model(ckpt)
        weights += f" (from {ckpt})"
    else:
        no_model = (
            f"the artifact's source checkpoint {ckpt} is not here; only the artifact is timed "
            "(run from the folder it was exported in, or pass --cascade NAME --runs DIR)"
        )
        say(no_model)
    trained_on = _data_dir(sidecar.get("recipe"))
    return Source(sidecar.name, size, model, sidecar, weights, trained_on, no_model)


def _from_name(cfg: BenchConfig, default_size: int, say: Callable[[str], None]) -> Source:
    """A model by name: RUNS/<name>/best.pt, else (when --runs was not given) random init."""
    name = cfg.name
    if name not in MODEL_NAMES:
        raise BenchError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    runs = Path(cfg.runs) if cfg.runs is not None else Path("runs")
    ckpt = runs / name / "best.pt"
    if ckpt.is_file():
        model, state = _load_checkpoint_model(ckpt)
        trained = int((state.get("model_args") or {}).get("size") or 0)
        size = cfg.size or trained or default_size
        return Source(name, size, model, None, f"checkpoint {ckpt}", _data_dir(state["recipe"]))
    if cfg.runs is not None:
        raise BenchError(
            f"no checkpoint {ckpt}; train it with `ptxfast train --arch {name} --runs {runs}`, "
            "or leave out --runs to time it at random init"
        )
    size = cfg.size or default_size
    say(f"no checkpoint {ckpt}: {name} at random init ({size}²) — speed figures only")
    return _random_init(name, size, cfg.seed)


# ------------------------------------------------------------------------------- variants


def plan_variants(
    requested: Sequence[str] | None, device: torch.device, has_artifact: bool = False
) -> list[tuple[str, str | None, str]]:
    """[(variant, reason it will not run or None, status if not run)] in run order.

    Unknown names are a BenchError listing the known ones. The default is every variant of the
    device type (DEFAULT_GPU / DEFAULT_CPU), with the artifact first when there is one; what
    cannot run here stays in the list with its reason (status "unavailable"), and what runs but
    is left out of a default on purpose is "skipped".
    """
    from ptxfast.inference.runtime import available_backends
    from ptxfast.inference.runtime import backend as registered

    gpu = device.type == "cuda"
    default = requested is None
    names = list(DEFAULT_GPU if gpu else DEFAULT_CPU) if default else list(requested)
    if default and has_artifact:
        names.insert(0, "artifact")
    known = ("artifact", *VARIANTS)
    bad = [n for n in names if n not in known]
    if bad:
        raise BenchError(f"unknown backend(s) {', '.join(bad)}; choose from {', '.join(known)}")
    if "artifact" in names and not has_artifact:
        raise BenchError("backend 'artifact' needs --model ARTIFACT (or an export to find)")
    reasons = available_backends(device)
    bf16_units = cpu_bf16()
    out: list[tuple[str, str | None, str]] = []
    for name in dict.fromkeys(names):  # each once, in the order asked
        if name == "artifact":
            out.append((name, None, ""))
            continue
        backend, precision = VARIANTS[name]
        reason = reasons.get(backend) or _precision_reason(backend, precision, device)
        if reason is not None:
            out.append((name, reason, "unavailable"))
        elif default and not gpu and registered(backend).slow_cpu_compile:
            out.append((name, CPU_INDUCTOR_SKIP, "skipped"))
        elif default and not gpu and precision == "bf16" and not bf16_units:
            out.append((name, NO_BF16_SKIP, "skipped"))
        else:
            out.append((name, None, ""))
    return out


def _precision_reason(backend: str, precision: str, device: torch.device) -> str | None:
    from ptxfast.inference.runtime import PredictorError, check_precision

    try:
        check_precision(backend, precision, device)
    except PredictorError as err:
        return str(err)
    return None


def build_variant(variant: str, src: Source, device: torch.device, batch_sizes, cfg: BenchConfig):
    """The predictor of one variant, built on the fly by `runtime.build_predictor` (or loaded,
    for the artifact); `Unavailable` when there is no fp32 model to build it from."""
    from ptxfast.inference.fused import quiet_jit
    from ptxfast.inference.runtime import backend as registered
    from ptxfast.inference.runtime import build_predictor, load_predictor

    if variant == "artifact":
        return load_predictor(src.sidecar, device=device)
    if src.model is None:
        raise Unavailable(src.no_model or "no model to build this variant from")
    backend, precision = VARIANTS[variant]
    lo, hi = min(batch_sizes), max(batch_sizes)
    opt = min(max(8, lo), hi)
    onnx_file = None
    if registered(backend).onnx:
        if src.onnx_dir is None:  # removed with the source at the end of the run
            src.onnx_dir = tempfile.TemporaryDirectory(prefix="ptxfast-bench-onnx-")
        onnx_file = Path(src.onnx_dir.name) / f"{src.name}.onnx"
    # Inductor in torch.compile's default mode (not max-autotune, whose kernel search takes
    # minutes) unless --inductor-mode says otherwise, with automatic dynamic shapes, so the
    # batch sizes after the first share one compiled graph instead of one each.
    inductor = dict(inductor_mode=cfg.inductor_mode or "default", dynamic=None)
    own = {k: v for k, v in inductor.items() if k in registered(backend).options}
    with quiet_jit():
        return build_predictor(
            backend, src.model, name=src.name, size=src.size, precision=precision,
            device=device, batch=(lo, opt, hi), check_trace=False, seed=cfg.seed,
            onnx_file=onnx_file, **own,
        )  # fmt: skip
