"""Side-by-side backend benchmark: throughput, latency percentiles, memory, GPU telemetry, parity.

`run_bench(BenchConfig(...))` times one model on every backend variant that can run here (eager
fp32 / fp16 / bf16, TorchScript, inductor, TensorRT, and an exported artifact) at several batch
sizes, the way timm's benchmark.py and nanoGPT's bench.py do: warm-up first, the device
synchronised around each timed step, `time.perf_counter`, inputs rotated among pre-made device
buffers, and several repeats so the spread between them shows. Each variant × batch size is one
flat dict (a row). A variant that cannot run here is a row too, with the reason; one that fails
while running is a row with its error, and the others go on. Then, per variant:

- parity against eager fp32 on a labelled set (a dataset's test split, or synthetic phantoms in
  memory): F1, recall, label agreement, max |Δprob| (`ptxfast.metrics.parity`);
- the stages of scoring — decoding real files, the pinned host→device copy, the model, the
  device→host copy — as ms per image and the images/s each stage alone allows, so the user sees
  what bounds end-to-end speed.

The report (JSON with every figure, and markdown) is rewritten after each row, so a run that is
cut short still leaves what it measured.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptxfast import MODEL_NAMES
from ptxfast.environment import cpu_bf16, sync, versions

SCHEMA_VERSION = 1

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

# Defaults per device type: (batch sizes, input size, warm-up, timed iters, repeats, parity
# images, stage files). The CPU ones keep a no-argument run on 2 cores under 3 minutes.
_GPU_DEFAULTS = dict(
    batch_sizes=(1, 8, 32, 64), size=512, warmup=5, iters=20, repeats=3, parity_n=64, stage_n=24
)
_CPU_DEFAULTS = dict(
    batch_sizes=(1, 8), size=128, warmup=2, iters=4, repeats=2, parity_n=32, stage_n=8
)
_PARITY_BATCH = 8
_BUFFERS = 4  # distinct pre-made inputs the timed loop rotates through

# Every row has exactly these keys (None where a figure does not apply or was not measured).
ROW_KEYS = (
    "variant", "backend", "precision", "path", "status", "error", "model", "size", "device",
    "batch", "build_s", "first_call_s", "warmup", "iters", "repeats", "samples",
    "images_per_s", "images_per_s_std", "images_per_s_min", "images_per_s_max",
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
    "image_ms_p50", "image_ms_p90", "image_ms_p99",
    "peak_memory_mib", "resident_memory_mib", "memory_source",
    "gpu_util_mean", "gpu_util_max", "power_mean_w", "power_max_w", "energy_j",
    "energy_j_per_image", "energy_source", "speedup_vs_eager",
)  # fmt: skip
PARITY_KEYS = (
    "variant", "backend", "precision", "status", "error", "n", "n_pos", "agreement",
    "n_disagree", "f1_ref", "f1", "delta_f1", "recall_ref", "recall", "delta_recall",
    "auc_ref", "auc", "delta_auc", "max_abs_diff", "mean_abs_diff", "threshold",
)  # fmt: skip
STAGE_KEYS = (
    "variant", "status", "error", "batch", "files", "decode_errors", "decode_ms_per_image",
    "decode_workers", "decode_images_per_s", "h2d_ms_per_image", "h2d_images_per_s",
    "compute_ms_per_image", "compute_images_per_s", "d2h_ms_per_image", "d2h_images_per_s",
    "serial_images_per_s", "bound", "bound_images_per_s",
)  # fmt: skip


class BenchError(ValueError):
    """A benchmark that cannot start as asked; the message says what to do."""


@dataclass
class BenchConfig:
    """One benchmark run. None fields take the device type's default (GPU / CPU)."""

    model: Path | None = None  # an exported artifact (model file or sidecar)
    name: str | None = None  # a model name: <runs>/<name>/best.pt, else random init
    runs: Path | None = None  # checkpoints folder for `name` [default: runs/]
    exports: Path = Path("exports")  # where a no-argument run looks for the newest artifact
    backends: tuple[str, ...] | None = None  # variant names (VARIANTS, "artifact")
    batch_sizes: tuple[int, ...] | None = None
    size: int | None = None  # input side; an artifact's or checkpoint's own size by default
    data: Path | None = None  # labelled dataset: its test split is the parity set
    device: str = "auto"
    warmup: int | None = None  # untimed calls per batch size (the first one is reported)
    iters: int | None = None  # timed calls per repeat
    repeats: int | None = None  # repeats of `iters`; their spread is reported
    parity_n: int | None = None  # images of the parity set (0: no parity)
    stage_n: int | None = None  # files decoded for the stage breakdown (0: no stages)
    inductor_mode: str | None = None  # torch.compile mode; None: the default mode
    threads: int | None = None  # torch intra-op threads on CPU [default: torch's]
    seed: int = 0
    json_out: Path | None = None  # rewritten after each row
    markdown_out: Path | None = None  # rewritten after each row


@dataclass
class BenchReport:
    """What a run measured; `as_dict()` is the JSON file."""

    environment: dict[str, Any]
    config: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    parity: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    complete: bool = False  # False while running, or when the run was cut short

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and infinities as null)."""
        return _clean(
            {
                "schema": SCHEMA_VERSION,
                "complete": self.complete,
                "seconds": self.seconds,
                "environment": self.environment,
                "config": self.config,
                "model": self.model,
                "data": self.data,
                "rows": self.rows,
                "parity": self.parity,
                "stages": self.stages,
                "notes": self.notes,
            }
        )


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------------------- arithmetic


LATENCY_PERCENTILES = (50, 90, 95, 99)  # the one set every latency report gives


def percentiles(
    values: Sequence[float], qs: Sequence[int] = LATENCY_PERCENTILES
) -> dict[str, float]:
    """{"p50": ..., "p90": ..., "p95": ..., "p99": ...} of `values` (linear interpolation
    between samples, numpy's default)."""
    if len(values) == 0:
        raise ValueError("percentiles of no values")
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs}


def latency_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """`percentiles` of latencies given in seconds, in milliseconds; None each when empty."""
    if len(seconds) == 0:
        return dict.fromkeys((f"p{q}" for q in LATENCY_PERCENTILES), None)
    return percentiles([t * 1000.0 for t in seconds])


def summarize_times(times: Sequence[Sequence[float]], batch: int) -> dict[str, float | int]:
    """Throughput and latency figures of timed batches: `times[r][i]` is the seconds of call i of
    repeat r, each call scoring `batch` images.

    images_per_s: all images / all timed seconds; _std/_min/_max: over the repeats' own
    throughputs (std 0 for one repeat). latency_ms_*: per batch; image_ms_*: per image (the batch
    latency divided by the batch size).
    """
    if batch < 1 or not times or any(len(r) == 0 for r in times):
        raise ValueError("summarize_times needs batch >= 1 and at least one call per repeat")
    flat = [t for rep in times for t in rep]
    per_repeat = [batch * len(rep) / sum(rep) for rep in times]
    lat = percentiles([t * 1000.0 for t in flat])
    return {
        "samples": len(flat),
        "images_per_s": batch * len(flat) / sum(flat),
        "images_per_s_std": statistics.stdev(per_repeat) if len(per_repeat) > 1 else 0.0,
        "images_per_s_min": min(per_repeat),
        "images_per_s_max": max(per_repeat),
        "latency_ms_p50": lat["p50"],
        "latency_ms_p90": lat["p90"],
        "latency_ms_p99": lat["p99"],
        "latency_ms_mean": 1000.0 * statistics.fmean(flat),
        "image_ms_p50": lat["p50"] / batch,
        "image_ms_p90": lat["p90"] / batch,
        "image_ms_p99": lat["p99"] / batch,
    }


def energy_per_image(
    energy_j: float | None, power_mean_w: float | None, seconds: float, images: int
) -> tuple[float | None, str | None]:
    """(J per image, source): the board's energy counter when it answered, else mean power ×
    time; (None, None) without either."""
    if images <= 0:
        return None, None
    if energy_j is not None and energy_j > 0:
        return energy_j / images, "nvml_energy_counter"
    if power_mean_w is not None and seconds > 0:
        return power_mean_w * seconds / images, "nvml_mean_power_x_time"
    return None, None


def stage_figures(ms_per_image: dict[str, float | None], decode_workers: int) -> dict[str, Any]:
    """Implied images/s of each stage alone, the serial rate, and the stage that bounds a fully
    overlapped pipeline. `ms_per_image` has decode (one process), h2d, compute, d2h; None where a
    stage does not exist (the copies on a CPU)."""
    out: dict[str, Any] = {}
    rates: dict[str, float] = {}
    for stage in ("decode", "h2d", "compute", "d2h"):
        ms = ms_per_image.get(stage)
        rate = None
        if ms is not None and ms > 0:
            rate = 1000.0 / ms * (decode_workers if stage == "decode" else 1)
            rates[stage] = rate
        out[f"{stage}_ms_per_image"] = ms
        out[f"{stage}_images_per_s"] = rate
    total = sum(v for v in ms_per_image.values() if v is not None)
    out["serial_images_per_s"] = 1000.0 / total if total > 0 else None
    out["bound"] = min(rates, key=rates.__getitem__) if rates else None
    out["bound_images_per_s"] = min(rates.values()) if rates else None
    return out


def _row(**values: Any) -> dict[str, Any]:
    row = dict.fromkeys(ROW_KEYS)
    unknown = set(values) - set(ROW_KEYS)
    if unknown:
        raise KeyError(f"not row keys: {sorted(unknown)}")
    row.update(values)
    return row


def _keyed(keys: Sequence[str], **values: Any) -> dict[str, Any]:
    out = dict.fromkeys(keys)
    out.update({k: v for k, v in values.items() if k in keys})
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


# ------------------------------------------------------------------------------- measuring


class _PeakMemory:
    """Peak memory over a block: CUDA max_memory_allocated, or on a CPU the process's peak RSS
    (VmHWM reset through /proc/self/clear_refs; else the lifetime peak from getrusage)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib: float | None = None
        self.resident_mib: float | None = None
        self.source: str | None = None

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.resident_mib = torch.cuda.memory_allocated(self.device) / 2**20
            self.source = "cuda_max_memory_allocated"
            return self
        rss = _status_kib("VmRSS")
        self.resident_mib = rss / 1024 if rss is not None else None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.source = "process_rss_peak"
        except OSError:
            self.source = "process_rss_peak_lifetime"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        hwm = _status_kib("VmHWM") if self.source == "process_rss_peak" else None
        if hwm is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            hwm = peak / 1024 if sys.platform == "darwin" else float(peak)  # bytes on macOS
            self.source = "process_rss_peak_lifetime"
        self.peak_mib = hwm / 1024


def _status_kib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _buffers(predictor, batch: int, seed: int) -> list[torch.Tensor]:
    """Inputs already on the device, in the predictor's dtype and layout: the timed loop then
    measures the model, not the copy (the stage breakdown times the copy)."""
    g = torch.Generator().manual_seed(seed * 1009 + batch)
    s = predictor.size
    fmt = torch.channels_last if predictor.channels_last else torch.contiguous_format
    return [
        torch.rand(batch, 1, s, s, generator=g)
        .to(predictor.device, predictor.input_dtype)
        .contiguous(memory_format=fmt)
        for _ in range(_BUFFERS)
    ]


def time_predictor(
    predictor, batch: int, *, warmup: int, iters: int, repeats: int, seed: int = 0, sampler=None
) -> tuple[list[list[float]], float]:
    """Time `predictor` on batches of `batch`: (seconds per call per repeat, first call seconds).

    The first call (compilation and autotuning included) and `warmup - 1` more are untimed;
    then `repeats` × `iters` calls, each between two device synchronisations, rotating among
    pre-made inputs. `sampler` (a context manager, e.g. a GpuSampler) wraps the timed calls only.
    """
    dev = predictor.device
    xs = _buffers(predictor, batch, seed)
    sync(dev)
    t0 = time.perf_counter()
    predictor(xs[0])
    sync(dev)
    first = time.perf_counter() - t0
    for i in range(1, max(1, warmup)):
        predictor(xs[i % len(xs)])
    sync(dev)
    times: list[list[float]] = []
    k = 0
    with sampler if sampler is not None else contextlib.nullcontext():
        for _ in range(repeats):
            rep = []
            for _ in range(iters):
                x = xs[k % len(xs)]
                k += 1
                sync(dev)
                t0 = time.perf_counter()
                predictor(x)
                sync(dev)
                rep.append(time.perf_counter() - t0)
            times.append(rep)
    return times, first


def measure(
    predictor,
    batch: int,
    *,
    warmup: int,
    iters: int,
    repeats: int,
    seed: int = 0,
) -> dict[str, Any]:
    """One row's figures for `predictor` at `batch`: timing, peak memory and, on a GPU whose NVML
    answers, utilisation, power and energy per image."""
    from ptxfast.telemetry import GpuSampler

    dev = predictor.device
    sampler = GpuSampler(dev, interval=0.02) if dev.type == "cuda" else None
    with _PeakMemory(dev) as mem:
        times, first = time_predictor(
            predictor, batch, warmup=warmup, iters=iters, repeats=repeats, seed=seed,
            sampler=sampler,
        )  # fmt: skip
    figures = summarize_times(times, batch)
    out: dict[str, Any] = {
        "batch": batch,
        "first_call_s": first,
        "warmup": warmup,
        "iters": iters,
        "repeats": repeats,
        **figures,
        "peak_memory_mib": mem.peak_mib,
        "resident_memory_mib": mem.resident_mib,
        "memory_source": mem.source,
    }
    if sampler is not None and sampler.active:
        g = sampler.stats
        seconds = sum(sum(r) for r in times)
        per_image, source = energy_per_image(
            g.energy_j, g.power_mean_w, seconds, figures["samples"] * batch
        )
        out.update(
            gpu_util_mean=g.util_mean,
            gpu_util_max=g.util_max,
            power_mean_w=g.power_mean_w,
            power_max_w=g.power_max_w,
            energy_j=g.energy_j,
            energy_j_per_image=per_image,
            energy_source=source,
        )
    return out


# ------------------------------------------------------------------------------ environment


# ------------------------------------------------------------------------------ the model


@dataclass
class _Source:
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


def _load_checkpoint_model(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    from ptxfast.checkpoint import CheckpointError, model_from_checkpoint

    try:
        return model_from_checkpoint(path)
    except (CheckpointError, RuntimeError, KeyError) as err:
        raise BenchError(f"{path}: {_first_line(err)}; retrain or re-export it") from None


def _data_dir(recipe: dict[str, Any] | None) -> Path | None:
    data = (recipe or {}).get("data")
    return Path(data) if data and Path(data).is_dir() else None


def _resolve_source(cfg: BenchConfig, gpu: bool, say: Callable[[str], None]) -> _Source:
    from ptxfast.artifact import ArtifactError, latest_artifact, read_sidecar
    from ptxfast.models import build

    if cfg.model is not None and cfg.name is not None:
        raise BenchError("give --model ARTIFACT or --cascade NAME, not both")
    default_size = (_GPU_DEFAULTS if gpu else _CPU_DEFAULTS)["size"]
    sidecar = None
    if cfg.model is not None:
        try:
            sidecar = read_sidecar(cfg.model)
        except ArtifactError as err:
            raise BenchError(str(err)) from None
    elif cfg.name is None:
        try:
            sidecar = read_sidecar(latest_artifact(cfg.exports))
            say(f"no --model or --cascade: benchmarking the newest export, {sidecar.path}")
        except ArtifactError:
            size = cfg.size or default_size
            say(
                f"no --model, --cascade or export in {cfg.exports}: eb3un+eb3 at random init "
                f"({size}²) on synthetic phantoms in memory — speed figures; parity compares "
                "the backends on untrained weights"
            )
            torch.manual_seed(cfg.seed)
            model = build("eb3un+eb3", weights=None).eval()
            return _Source("eb3un+eb3", size, model, None, "random init", None)

    if sidecar is not None:
        size = int(sidecar["input"]["size"])
        if cfg.size and cfg.size != size:
            raise BenchError(
                f"{sidecar.model_path} runs at {size}², not --size {cfg.size}; drop --size or "
                f"export at {cfg.size}"
            )
        ckpt = Path(((sidecar.get("sources") or {}).get("checkpoint") or {}).get("path", ""))
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
        return _Source(
            sidecar["name"], size, model, sidecar, weights, _data_dir(sidecar.get("recipe")),
            no_model,
        )  # fmt: skip

    name = cfg.name
    if name not in MODEL_NAMES:
        raise BenchError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    runs = Path(cfg.runs) if cfg.runs is not None else Path("runs")
    ckpt = runs / name / "best.pt"
    if ckpt.is_file():
        model, state = _load_checkpoint_model(ckpt)
        trained = int((state.get("model_args") or {}).get("size") or 0)
        size = cfg.size or trained or default_size
        return _Source(name, size, model, None, f"checkpoint {ckpt}", _data_dir(state["recipe"]))
    if cfg.runs is not None:
        raise BenchError(
            f"no checkpoint {ckpt}; train it with `ptxfast train --arch {name} --runs {runs}`, "
            "or leave out --runs to time it at random init"
        )
    size = cfg.size or default_size
    say(f"no checkpoint {ckpt}: {name} at random init ({size}²) — speed figures only")
    torch.manual_seed(cfg.seed)
    return _Source(name, size, build(name, weights=None).eval(), None, "random init", None)


# -------------------------------------------------------------------------------- variants


def plan_variants(
    requested: Sequence[str] | None, device: torch.device, has_artifact: bool = False
) -> list[tuple[str, str | None, str]]:
    """[(variant, reason it will not run or None, status if not run)] in run order.

    Unknown names are a BenchError listing the known ones. The default is every variant of the
    device type (DEFAULT_GPU / DEFAULT_CPU), with the artifact first when there is one; what
    cannot run here stays in the list with its reason (status "unavailable"), and what runs but
    is left out of a default on purpose is "skipped".
    """
    from ptxfast.runtime import PredictorError, available_backends, check_precision

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
        reason = reasons.get(backend)
        if reason is None:
            try:
                check_precision(backend, precision, device)
            except PredictorError as err:
                reason = str(err)
        if reason is not None:
            out.append((name, reason, "unavailable"))
        elif default and not gpu and backend == "inductor":
            out.append((name, CPU_INDUCTOR_SKIP, "skipped"))
        elif default and not gpu and precision == "bf16" and not bf16_units:
            out.append((name, NO_BF16_SKIP, "skipped"))
        else:
            out.append((name, None, ""))
    return out


def _build(variant: str, src: _Source, device: torch.device, batch_sizes, cfg: BenchConfig):
    """The predictor of one variant, built on the fly (or loaded, for the artifact)."""
    from ptxfast.fused import PRECISIONS, fuse, quiet_jit
    from ptxfast.runtime import Predictor, build_predictor, load_predictor

    if variant == "artifact":
        return load_predictor(src.sidecar, device=device)
    if src.model is None:
        raise _Unavailable(src.no_model or "no model to build this variant from")
    backend, precision = VARIANTS[variant]
    lo, hi = min(batch_sizes), max(batch_sizes)
    opt = min(max(8, lo), hi)
    if backend == "inductor":
        # Built here rather than by runtime.build_predictor: the default mode (not
        # max-autotune, whose kernel search takes minutes), and automatic dynamic shapes, so
        # the batch sizes after the first share one compiled graph instead of one each.
        fused = fuse(src.model, src.name, src.size, precision=precision, device=device)
        compiled = torch.compile(fused, mode=cfg.inductor_mode, dynamic=None)
        return Predictor(
            compiled, name=src.name, size=src.size, backend="inductor", precision=precision,
            device=device, input_dtype=PRECISIONS[precision],
            path=f"inductor:{cfg.inductor_mode or 'default'}",
        )  # fmt: skip
    onnx_file = None
    if backend in ("onnxruntime", "openvino"):
        import tempfile

        if src.onnx_dir is None:  # removed with the source at the end of the run
            src.onnx_dir = tempfile.TemporaryDirectory(prefix="ptxfast-bench-onnx-")
        onnx_file = Path(src.onnx_dir.name) / f"{src.name}.onnx"
    with quiet_jit():
        return build_predictor(
            backend, src.model, name=src.name, size=src.size, precision=precision,
            device=device, batch=(lo, opt, hi), check_trace=False, seed=cfg.seed,
            onnx_file=onnx_file,
        )  # fmt: skip


class _Unavailable(Exception):
    """A variant that cannot be built here, for a reason that is not an error."""


# ----------------------------------------------------------------------------- the data


def _labelled_set(
    cfg: BenchConfig, src: _Source, n: int, say: Callable[[str], None]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict[str, Any], list[Path]]:
    """(parity batches, what they are, paths of real files for the stage breakdown)."""
    from ptxfast.data.datasets import DatasetError, PTXDataset, ensure_splits
    from ptxfast.export import phantom_batches

    data = Path(cfg.data) if cfg.data is not None else src.trained_on
    if data is not None:
        if not data.is_dir():
            raise BenchError(f"--data {data} is not a folder; give a dataset folder")
        try:
            records = ensure_splits(data, seed=cfg.seed)["test"]
        except (DatasetError, OSError) as err:
            raise BenchError(f"cannot read the test split of {data}: {err}") from None
        if not records:
            raise BenchError(f"{data} has an empty test split; pass another --data")
        chosen = records[:n] if n > 0 else []
        batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        if chosen:
            loader = torch.utils.data.DataLoader(
                PTXDataset(chosen, src.size, with_mask=False), batch_size=_PARITY_BATCH
            )
            batches = [(x, y) for x, _, y in loader]
        info = {
            "source": "test split",
            "data": str(data),
            "n": len(chosen),
            "n_pos": int(sum(r.label for r in chosen)),
            "test_split_size": len(records),
        }
        if chosen:
            say(f"parity on {len(chosen)} images of the test split of {data}")
        return batches, info, [r.path for r in records]
    batches = list(phantom_batches(n, src.size, _PARITY_BATCH, seed=cfg.seed)) if n > 0 else []
    n_pos = int(sum(float(y.sum()) for _, y in batches))
    return batches, {"source": "synthetic phantoms", "n": n, "n_pos": n_pos, "seed": cfg.seed}, []


def _phantom_files(n: int, seed: int, folder: Path) -> list[Path]:
    """`n` synthetic 1024² DICOMs (the CANDID-PTX layout, mixed transfer syntaxes) in `folder`."""
    from ptxfast.data.synth import write_dataset

    # Up to 24 images are written in this process (worker start-up would cost more).
    workers = 1 if n <= 24 else min(8, os.cpu_count() or 1)
    write_dataset(folder, n, seed, size=1024, workers=workers)
    return sorted((folder / "images").glob("*.dcm"))


def _decode(paths: Sequence[Path], size: int) -> tuple[torch.Tensor | None, float, int]:
    """(decoded images N×1×S×S, seconds per decoded image in one process, failures)."""
    import warnings

    from ptxfast.data.dicom import load_image

    images, errors, seconds = [], 0, 0.0
    for path in paths:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img, _ = load_image(path, size)
        except Exception:  # a file the scorer would give an error row: not a decode timing
            errors += 1
            continue
        seconds += time.perf_counter() - t0
        images.append(img)
    if not images:
        return None, 0.0, errors
    return torch.from_numpy(np.stack(images))[:, None], seconds / len(images), errors


def measure_stages(
    predictor, images: torch.Tensor, batch: int, decode_s_per_image: float, decode_workers: int
) -> dict[str, Any]:
    """ms per image of the host→device copy (from pinned memory), the model and the
    device→host copy of its outputs for full batches of `batch` made from `images`, with the
    decode time measured before, and what each stage alone allows."""
    dev = predictor.device
    n = images.shape[0]
    cuda = dev.type == "cuda"
    # Full batches only (the shape the timing warmed; a new one would recompile some backends);
    # on a GPU at least two, where they cost little.
    pool = images.repeat(math.ceil(max(n, (2 if cuda else 1) * batch) / n), 1, 1, 1)
    chunks = [pool[i : i + batch] for i in range(0, pool.shape[0] - batch + 1, batch)]
    if cuda:  # pinned as the scorer's DataLoader pins them, off the timed path
        chunks = [c.pin_memory() for c in chunks]
        predictor(chunks[0].to(dev))  # the first copy from a new pinned buffer is slower
        sync(dev)
    h2d = compute = d2h = 0.0
    for chunk in chunks:
        t0 = time.perf_counter()
        x = chunk.to(dev, non_blocking=True)
        sync(dev)
        t1 = time.perf_counter()
        out = predictor(x)
        sync(dev)
        t2 = time.perf_counter()
        for t in out:
            if t is not None:
                t.cpu()
        t3 = time.perf_counter()
        h2d, compute, d2h = h2d + t1 - t0, compute + t2 - t1, d2h + t3 - t2
    images_timed = batch * len(chunks)
    ms = {
        "decode": 1000.0 * decode_s_per_image if decode_s_per_image > 0 else None,
        "h2d": 1000.0 * h2d / images_timed if cuda else None,  # no copy on a CPU
        "compute": 1000.0 * compute / images_timed,
        "d2h": 1000.0 * d2h / images_timed if cuda else None,
    }
    return {"batch": batch, **stage_figures(ms, decode_workers)}


# ------------------------------------------------------------------------------- the run


def _resolve(cfg: BenchConfig, gpu: bool) -> dict[str, Any]:
    d = _GPU_DEFAULTS if gpu else _CPU_DEFAULTS
    r = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in d.items()}
    r["batch_sizes"] = tuple(sorted(set(r["batch_sizes"])))
    if not r["batch_sizes"] or min(r["batch_sizes"]) < 1:
        raise BenchError("--batch-sizes must be positive integers, e.g. 1,8,32")
    for key in ("warmup", "iters", "repeats"):
        if r[key] < 1:
            raise BenchError(f"--{key} must be at least 1")
    for key in ("parity_n", "stage_n"):
        if r[key] < 0:
            raise BenchError(f"--{key.replace('_', '-')} must be 0 or more")
    return r


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _speedups(rows: list[dict[str, Any]]) -> None:
    base = {
        r["batch"]: r["images_per_s"]
        for r in rows
        if r["variant"] == "eager" and r["status"] == "ok" and r["images_per_s"]
    }
    for r in rows:
        if r["status"] == "ok" and r["batch"] in base:
            r["speedup_vs_eager"] = r["images_per_s"] / base[r["batch"]]


def run_bench(cfg: BenchConfig, say: Callable[[str], None] = lambda _: None) -> BenchReport:
    """Benchmark one model on each backend variant; see the module docstring.

    Raises BenchError for what cannot start (a bad option, a missing checkpoint); anything that
    fails later is recorded in the report and the run goes on.
    """
    from ptxfast.environment import DeviceError, resolve_device

    start = time.perf_counter()
    try:
        dev = resolve_device(cfg.device)
    except DeviceError as err:
        raise BenchError(str(err)) from None
    gpu = dev.type == "cuda"
    r = _resolve(cfg, gpu)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        src = _resolve_source(cfg, gpu, say)
        if src.size < 32 or src.size % 32:
            raise BenchError(f"size {src.size} must be a multiple of 32 (U-Net strides)")
        plan = plan_variants(cfg.backends, dev, has_artifact=src.sidecar is not None)
        report = BenchReport(
            environment=versions(dev),
            config={
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()},
                "variants": [v for v, _, _ in plan],
                "inductor_mode": cfg.inductor_mode or "default",
                "seed": cfg.seed,
                "parity_batch": _PARITY_BATCH,
                "input_buffers": _BUFFERS,
            },
            model={
                "name": src.name,
                "size": src.size,
                "weights": src.weights,
                "artifact": str(src.sidecar.path) if src.sidecar is not None else None,
            },
        )
        return _run(cfg, r, dev, src, plan, report, start, say)
    finally:
        torch.set_num_threads(threads_before)


def _run(
    cfg: BenchConfig,
    r: dict[str, Any],
    dev: torch.device,
    src: _Source,
    plan: list[tuple[str, str | None, str]],
    report: BenchReport,
    start: float,
    say: Callable[[str], None],
) -> BenchReport:
    """The measurements of `run_bench`, saved after each row."""
    from ptxfast.export import strict_fp32
    from ptxfast.runtime import PredictorError, build_predictor
    from ptxfast.scoring import default_workers

    def save() -> None:
        _speedups(report.rows)
        report.seconds = time.perf_counter() - start
        if cfg.json_out is not None:
            _write_atomic(Path(cfg.json_out), json.dumps(report.as_dict(), indent=2) + "\n")
        if cfg.markdown_out is not None:
            _write_atomic(Path(cfg.markdown_out), to_markdown(report.as_dict()))

    save()  # the files exist (and say what is planned) before the first measurement
    batches, info, data_paths = _labelled_set(cfg, src, r["parity_n"], say)
    report.data = info
    labels = np.concatenate([y.numpy() for _, y in batches]) if batches else None

    # Stage breakdown inputs: real files decoded once, the same for every variant.
    images, decode_s, decode_errors, stage_info = None, 0.0, 0, {}
    if r["stage_n"] > 0:
        with tempfile.TemporaryDirectory(prefix="ptxfast-bench-") as tmp:
            paths = data_paths[: r["stage_n"]]
            what = f"{len(paths)} files of {info.get('data')}"
            if not paths:
                say(f"writing {r['stage_n']} synthetic 1024² DICOMs for the stage breakdown")
                paths = _phantom_files(r["stage_n"], cfg.seed, Path(tmp) / "phantoms")
                what = f"{len(paths)} synthetic 1024² DICOMs (mixed transfer syntaxes)"
            images, decode_s, decode_errors = _decode(paths, src.size)
        stage_info = {"stage_files": what, "decode_s_per_image": decode_s}
        report.data.update(stage_info)
    workers = default_workers(dev)
    save()

    reference, ref_probs, ref_build_s = None, None, None
    if src.model is not None and batches:
        say("eager fp32 reference for parity")
        t0 = time.perf_counter()
        reference = build_predictor(
            "eager", src.model, name=src.name, size=src.size, device=dev, seed=cfg.seed
        )
        ref_build_s = time.perf_counter() - t0
        with strict_fp32():
            ref_probs = np.concatenate(
                [reference(x).prob.float().cpu().numpy() for x, _ in batches]
            )
    elif not batches:
        report.notes.append("no parity set (--parity-n 0)")
    else:
        report.notes.append(f"no parity: {src.no_model}")

    for variant, reason, status in plan:
        backend, precision = VARIANTS.get(variant, (None, None))
        label = variant
        if variant == "artifact":
            backend = src.sidecar["backend"]
            precision = src.sidecar["precision"]["requested"]
            tta = src.sidecar.get("tta", "none")
            if tta != "none":
                # Its cost sits beside the plain graphs of the other rows; its parity is
                # against the plain eager model, so it includes what the averaging changes.
                label = f"artifact+{tta}"
                report.notes.append(
                    f"{label}: the artifact averages each image with its mirror ({tta} TTA, "
                    "2x compute); the other variants are the plain graph"
                )
        base = dict(
            variant=label, backend=backend, precision=precision, model=src.name,
            size=src.size, device=str(dev),
        )  # fmt: skip
        if reason is not None:
            report.rows.append(_row(**base, status=status, error=reason))
            report.parity.append(_keyed(PARITY_KEYS, **base, status=status, error=reason))
            save()
            continue
        say(f"{variant}: building")
        t0 = time.perf_counter()
        try:
            predictor = (
                reference
                if variant == "eager" and reference is not None
                else _build(variant, src, dev, r["batch_sizes"], cfg)
            )
        except (_Unavailable, PredictorError) as err:
            report.rows.append(_row(**base, status="unavailable", error=str(err)))
            report.parity.append(_keyed(PARITY_KEYS, **base, status="unavailable", error=str(err)))
            save()
            continue
        except Exception as err:  # a backend that breaks is reported; the others go on
            say(f"{variant}: failed to build — {_first_line(err)}")
            report.rows.append(_row(**base, status="failed", error=_first_line(err)))
            report.parity.append(_keyed(PARITY_KEYS, **base, status="failed", error="not built"))
            save()
            continue
        build_s = time.perf_counter() - t0
        if predictor is reference:  # the reference built above serves as the eager variant
            build_s = ref_build_s
        base["path"] = predictor.path
        ok_batches = []
        for batch in r["batch_sizes"]:
            try:
                figures = measure(
                    predictor, batch, warmup=r["warmup"], iters=r["iters"],
                    repeats=r["repeats"], seed=cfg.seed,
                )  # fmt: skip
                row = _row(**base, status="ok", build_s=build_s, **figures)
                ok_batches.append(batch)
                say(
                    f"{variant} batch {batch}: {row['images_per_s']:.1f} images/s, "
                    f"p50 {row['latency_ms_p50']:.1f} ms/batch"
                )
            except Exception as err:
                say(f"{variant} batch {batch}: failed — {_first_line(err)}")
                row = _row(**base, status="failed", batch=batch, error=_first_line(err))
                _free(dev)
            report.rows.append(row)
            save()
        report.parity.append(parity_row(predictor, batches, labels, ref_probs, base))
        if images is not None and ok_batches:
            try:
                stage = measure_stages(predictor, images, max(ok_batches), decode_s, workers)
                report.stages.append(
                    _keyed(STAGE_KEYS, **stage, variant=label, status="ok",
                           files=int(images.shape[0]), decode_errors=decode_errors,
                           decode_workers=workers)
                )  # fmt: skip
            except Exception as err:
                report.stages.append(
                    _keyed(STAGE_KEYS, variant=label, status="failed", error=_first_line(err))
                )
        if predictor is not reference:
            del predictor
        _free(dev)
        save()
    with contextlib.suppress(OSError):
        report.environment["load_after"] = [round(v, 2) for v in os.getloadavg()]
    report.complete = True
    save()
    return report


def parity_row(
    predictor, batches, labels, ref_probs, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A PARITY_KEYS row: `metrics.parity` of `predictor`'s probabilities on `batches` against
    the eager fp32 ones (`ref_probs`), with `labels` the ground truth; errors become the row's."""
    from ptxfast.export import strict_fp32
    from ptxfast.metrics import parity

    base = base or {}
    if ref_probs is None:
        return _keyed(PARITY_KEYS, **base, status="skipped", error="no eager fp32 reference")
    try:
        with strict_fp32():
            probs = np.concatenate([predictor(x).prob.float().cpu().numpy() for x, _ in batches])
        threshold = float(predictor.thresholds["label"])
        fig = parity(ref_probs, probs, labels, threshold=threshold)
        return _keyed(PARITY_KEYS, **base, **fig, status="ok", threshold=threshold)
    except Exception as err:
        return _keyed(PARITY_KEYS, **base, status="failed", error=_first_line(err))


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ rendering


def _f(v: Any, fmt: str = ".1f", dash: str = "—") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return dash
    return format(v, fmt)


def _ms(v: float) -> str:
    """Milliseconds with three significant figures or so."""
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def throughput_cells(row: dict[str, Any]) -> list[str]:
    """The cells of one row in the throughput table (rich and markdown show the same)."""
    if row["status"] != "ok":
        return [row["variant"], _f(row["batch"], "d"), row["status"], *[""] * 7]
    return [
        row["variant"],
        str(row["batch"]),
        f"{row['images_per_s']:.1f} ± {row['images_per_s_std']:.1f}",
        "/".join(_ms(row[f"latency_ms_p{q}"]) for q in (50, 90, 99)),
        _ms(row["image_ms_p50"]),
        _f(row["peak_memory_mib"], ".0f"),
        _f(row["gpu_util_mean"], ".0f"),
        _f(row["power_mean_w"], ".0f"),
        _f(row["energy_j_per_image"], ".3f"),
        _f(row["speedup_vs_eager"], ".2f") + ("×" if row["speedup_vs_eager"] else ""),
    ]


THROUGHPUT_HEADER = (
    "variant", "batch", "images/s ± std", "ms/batch p50/p90/p99", "ms/image p50",
    "peak MiB", "GPU %", "W", "J/image", "vs eager",
)  # fmt: skip
PARITY_HEADER = (
    "variant",
    "agreement",
    "F1 (eager → this)",
    "recall (eager → this)",
    "max |Δprob|",
)
STAGE_HEADER = ("variant", "batch", "decode", "host→device", "compute", "device→host", "bound")


def parity_cells(p: dict[str, Any]) -> list[str]:
    """The cells of one parity row."""
    if p["status"] != "ok":
        return [p["variant"], p["status"], "", "", ""]
    return [
        p["variant"],
        f"{p['agreement']:.2%} ({p['n_disagree']} of {p['n']} differ)",
        f"{p['f1_ref']:.3f} → {p['f1']:.3f} (Δ {p['delta_f1']:+.3f})",
        f"{p['recall_ref']:.3f} → {p['recall']:.3f} (Δ {p['delta_recall']:+.3f})",
        f"{p['max_abs_diff']:.2g}",
    ]


def stage_cells(s: dict[str, Any]) -> list[str]:
    """The cells of one stage row: ms per image (images/s that stage alone allows)."""
    if s["status"] != "ok":
        return [s["variant"], "", s["status"], "", "", "", s.get("error") or ""]

    def cell(stage: str) -> str:
        ms = s[f"{stage}_ms_per_image"]
        if ms is None:
            return "n/a"
        return f"{ms:.2f} ms ({s[f'{stage}_images_per_s']:.0f}/s)"

    decode = cell("decode")
    if s["decode_ms_per_image"] is not None and s["decode_workers"] > 1:
        decode += f" ×{s['decode_workers']} proc"
    bound = f"{s['bound']} ({_f(s['bound_images_per_s'], '.0f')}/s)" if s["bound"] else "—"
    return [s["variant"], str(s["batch"]), decode, cell("h2d"), cell("compute"), cell("d2h"), bound]


def throughput_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the rows that have a batch size, without the columns no row fills
    (GPU telemetry on a CPU, say)."""
    cells = [throughput_cells(r) for r in rows if r["batch"] is not None]
    keep = [
        i
        for i in range(len(THROUGHPUT_HEADER))
        if i < 3 or any(c[i] not in ("", "—") for c in cells)
    ]
    return [THROUGHPUT_HEADER[i] for i in keep], [[c[i] for i in keep] for c in cells]


def title(report: dict[str, Any]) -> str:
    """One line: model, size, device, and the load where the figures were taken."""
    env, m = report["environment"], report["model"]
    threads = env.get("torch_threads")
    where = env.get("gpu") or f"{env.get('cpu') or 'CPU'}, {threads} thread{'s' * (threads != 1)}"
    load = env.get("load_before")
    load_txt = f", load {load[0]:.2f}" if load else ""
    if env.get("load_after"):
        load_txt += f" → {env['load_after'][0]:.2f}"
    return f"{m['name']} ({m['weights']}) at {m['size']}² on {env['device']}: {where}{load_txt}"


def _md_table(header: Sequence[str], rows: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: environment, throughput, what did not run, parity, stages."""
    env, cfg, data = report["environment"], report["config"], report.get("data") or {}
    out = [f"# ptxfast bench: {title(report)}\n"]
    if not report.get("complete"):
        out.append("_Partial: the run had not finished when this was written._\n")
    versions = ", ".join(
        f"{k} {env[k]}"
        for k in ("torch", "timm", "segmentation_models_pytorch", "torch_tensorrt", "tensorrt",
                  "cuda", "cudnn", "driver", "python")
        if env.get(k)
    )  # fmt: skip
    out.append(f"- date: {env.get('date')}; {versions}")
    out.append(
        f"- timing: warm-up {cfg['warmup']}, then {cfg['repeats']} × {cfg['iters']} timed "
        "calls per batch size, device-synchronised, inputs on the device (rotated among "
        f"{cfg['input_buffers']}); ± is the std of images/s across repeats"
    )
    if env.get("gpu") and env.get("cudnn_allow_tf32"):
        out.append(
            "- fp32 convolutions are timed as torch runs them by default, in TF32 "
            "(cudnn.allow_tf32); parity runs with TF32 off"
        )
    if data:
        parity_src = f"{data.get('source')} ({data.get('n')} images, {data.get('n_pos')} positive)"
        out.append(f"- parity set: {parity_src}")
        if data.get("stage_files"):
            out.append(f"- stages: {data['stage_files']}")
    out.append("")
    out.append("## Throughput and latency\n")
    out.append(_md_table(*throughput_table(report["rows"])))
    if any(r["status"] != "ok" for r in report["rows"]):
        out.append("## Not measured\n")
        for r in report["rows"]:
            if r["status"] != "ok":
                where = f" (batch {r['batch']})" if r["batch"] is not None else ""
                out.append(f"- **{r['variant']}**{where}: {r['status']} — {r['error']}")
        out.append("")
    if any(p["status"] == "ok" for p in report["parity"]):
        out.append("## Parity against eager fp32\n")
        rows = [parity_cells(p) for p in report["parity"] if p["status"] in ("ok", "failed")]
        out.append(_md_table(PARITY_HEADER, rows))
    if report["stages"]:
        out.append(
            "## Stages of scoring (ms per image, and the images/s that stage alone allows)\n"
        )
        out.append(_md_table(STAGE_HEADER, [stage_cells(s) for s in report["stages"]]))
    for note in report.get("notes") or []:
        out.append(f"- note: {note}")
    return "\n".join(out).rstrip() + "\n"


PLOT_FILES = ("throughput.png", "latency.png")


def write_plots(report: dict[str, Any], folder: str | os.PathLike) -> list[Path]:
    """`throughput.png` (images/s against batch size, one line per variant) and `latency.png`
    (p50 and p99 ms per batch against batch size) of a report's measured rows, in `folder`.

    Raises BenchError when no row was measured (nothing to draw)."""
    from ptxfast import plots

    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in report["rows"]:
        if r["status"] == "ok" and r.get("images_per_s"):
            by_variant.setdefault(r["variant"], []).append(r)
    if not by_variant:
        raise BenchError("no backend was measured, so there is nothing to plot")
    series = []
    for variant, rows in by_variant.items():
        rows = sorted(rows, key=lambda r: r["batch"])
        series.append(
            plots.BatchSeries(
                name=variant,
                batches=[r["batch"] for r in rows],
                images_per_s=[r["images_per_s"] for r in rows],
                images_per_s_std=[r.get("images_per_s_std") or 0.0 for r in rows],
                latency_p50_ms=[r["latency_ms_p50"] for r in rows],
                latency_p99_ms=[r["latency_ms_p99"] for r in rows],
            )
        )
    folder = Path(folder)
    where = title(report)
    return [
        plots.throughput_by_batch(series, folder / PLOT_FILES[0], where),
        plots.latency_by_batch(series, folder / PLOT_FILES[1], where),
    ]


__all__ = [
    "DEFAULT_CPU",
    "DEFAULT_GPU",
    "PARITY_KEYS",
    "ROW_KEYS",
    "STAGE_KEYS",
    "VARIANTS",
    "BenchConfig",
    "BenchError",
    "BenchReport",
    "energy_per_image",
    "measure",
    "measure_stages",
    "parity_row",
    "percentiles",
    "plan_variants",
    "run_bench",
    "stage_figures",
    "summarize_times",
    "time_predictor",
    "to_markdown",
    "write_plots",
]
