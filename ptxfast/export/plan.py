"""The plan of one export: profile, options and defaults resolved into what to build here.

`plan(cfg)` checks the model's name, picks the device, the (backend, precision) candidates
(on a CPU with no backend given, every one of `CPU_CANDIDATES` that runs here), the batch
range and the tolerance of each precision, and refuses what cannot run on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ptxfast import CASCADES, MODEL_NAMES
from ptxfast.environment import cpu_bf16, resolve_device
from ptxfast.export.config import (
    DEFAULT_TOLERANCES,
    ExportConfig,
    ExportError,
    Tolerance,
    check_tolerance,
    load_profile,
)
from ptxfast.inference.backends import (
    BACKENDS,
    EXPORTABLE,
    available_backends,
    check_precision,
)
from ptxfast.inference.fused import TTAS
from ptxfast.inference.operating import LabelRule
from ptxfast.models import kind_of

BACKEND_ALIASES = {"onnx": "onnxruntime"}


# What `ptxfast export` on a CPU tries when no backend is given, in this order (ties keep the
# earlier one). bf16 ones only on CPUs with bf16 units.
CPU_CANDIDATES = (
    ("torchscript", "fp32"),
    ("torchscript", "bf16"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
)


DEFAULT_BATCH = (1, 8, 32)


@dataclass
class Plan:
    """The resolved choices of one export. `candidates` lists the (backend, precision) pairs to
    build; with more than one (a CPU export without --backend) the fastest that passes its gate
    is kept, and `backend`, `precision`, `tolerance` are those of the first."""

    name: str
    kind: str
    device: torch.device
    backend: str
    precision: str
    batch: tuple[int, int, int]
    return_mask: bool
    tolerance: Tolerance
    notes: list[str]
    candidates: list[tuple[str, str]] = field(default_factory=list)
    tolerances: dict[str, Tolerance] = field(default_factory=dict)  # by precision
    tta: str = "none"  # test-time augmentation inside the graph (fused.TTAS)
    rule: LabelRule | None = None  # how the artifact labels (its operating point)


def plan(cfg: ExportConfig) -> Plan:
    """Resolve profile, options and defaults into one `Plan`; refuse what cannot run here."""
    _check_name(cfg.name, cfg.option)
    if cfg.profile:  # the profile fills what the options left open
        profile = load_profile(cfg.profile)
        tolerance = {**profile.pop("tolerance", {}), **cfg.tolerance}  # options win
        cfg = replace(cfg, **{k: v for k, v in profile.items() if getattr(cfg, k) is None})
        cfg = replace(cfg, tolerance=tolerance)
    notes: list[str] = []
    device = resolve_device(cfg.device or "auto")
    precision = cfg.precision or ("fp16" if device.type == "cuda" else "fp32")
    backend = BACKEND_ALIASES.get(cfg.backend, cfg.backend) if cfg.backend else None
    gpu_default = BACKENDS["tensorrt"]  # the GPU default where it runs; torchscript otherwise
    reason = gpu_default.unavailable(device)
    bf16 = cpu_bf16()
    if backend is None and device.type == "cpu":
        candidates = _cpu_candidates(cfg.precision, bf16, notes)
    elif backend is None and precision not in gpu_default.precisions:
        candidates = [("torchscript", precision)]  # TensorRT engines here are fp16 / fp32
    elif backend is None:
        candidates = [(gpu_default.name if reason is None else "torchscript", precision)]
        if reason is not None:
            notes.append(f"backend torchscript: {reason}")
    elif backend not in EXPORTABLE:
        choices = ", ".join([*EXPORTABLE, *BACKEND_ALIASES])
        raise ExportError(f"unknown backend {backend!r}; choose one of {choices}")
    else:
        candidates = [(backend, precision)]
    if len(candidates) == 1:
        backend, precision = candidates[0]
        _check_runs(backend, precision, device, bf16, notes)
    kind = kind_of(cfg.name)
    return_mask = bool(cfg.return_mask)
    if return_mask and kind == "classifier":
        raise ExportError(f"{cfg.name} is a classifier and has no mask; drop --return-mask")
    tolerances = {prec: _tolerance(cfg, prec) for _, prec in candidates}
    batch = cfg.batch or DEFAULT_BATCH
    backend, precision = candidates[0]
    if cfg.tta not in TTAS:
        raise ExportError(f"--tta {cfg.tta!r}: choose one of {', '.join(TTAS)}")
    return Plan(
        cfg.name, kind, device, backend, precision, batch, return_mask, tolerances[precision],
        notes, candidates, tolerances, cfg.tta,
    )  # fmt: skip


def _check_runs(
    backend: str, precision: str, device: torch.device, bf16: str | None, notes: list[str]
) -> None:
    """Refuse the one planned candidate when it cannot run here; note an emulated bf16."""
    missing = available_backends(device)[backend]
    if missing is not None:
        raise ExportError(missing)
    check_precision(backend, precision, device)
    if device.type == "cpu" and precision == "bf16" and not bf16:
        notes.append(
            "this CPU has no bf16 units: "
            + ("OpenVINO computes this artifact in f32 here" if BACKENDS[backend].threads_itself
               else "the bf16 artifact runs emulated (slow)")
        )  # fmt: skip


def _check_name(name: str, option: str | None) -> None:
    """Refuse a name that is not one of the eight, or that the CLI option naming it does not
    take (--cascade takes the four cascades, --model the other four)."""
    if option == "cascade" and name not in CASCADES:
        raise ExportError(
            f"--cascade {name!r} is not a cascade; choose one of {', '.join(CASCADES)}"
        )
    if option == "model" and (name not in MODEL_NAMES or name in CASCADES):
        others = [n for n in MODEL_NAMES if n not in CASCADES]
        hint = f" (use --cascade {name})" if name in CASCADES else ""
        raise ExportError(f"--model {name!r}: choose one of {', '.join(others)}{hint}")
    if name not in MODEL_NAMES:
        raise ExportError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


def _cpu_candidates(
    precision: str | None, bf16_units: str | None, notes: list[str]
) -> list[tuple[str, str]]:
    """CPU_CANDIDATES that can run here (of `precision` when one is asked for)."""
    if precision == "fp16":
        raise ExportError(
            "fp16 runs on CUDA GPUs; on a CPU use --precision bf16 (CPUs with bf16 units) or fp32"
        )
    reasons = available_backends("cpu")
    out, left = [], []
    for backend, prec in CPU_CANDIDATES:
        if precision is not None and prec != precision:
            continue
        if prec == "bf16" and not bf16_units and precision is None:
            left.append(f"{backend} bf16 (this CPU has no bf16 units)")
        elif reasons.get(backend) is not None:
            left.append(f"{backend} {prec} ({reasons[backend]})")
        else:
            out.append((backend, prec))
    if left:
        notes.append("left out of the CPU default choice: " + "; ".join(left))
    if not out:
        raise ExportError("no CPU backend can run here: " + "; ".join(left))
    return out


def _tolerance(cfg: ExportConfig, precision: str) -> Tolerance:
    return replace(DEFAULT_TOLERANCES[precision], **check_tolerance(cfg.tolerance, "tolerance"))
