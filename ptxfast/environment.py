"""The machine ptxfast runs on: which device to use, how to wait for it, and what it is.

One source for three rules every stage shares:
- `resolve_device`: "auto" means the first CUDA GPU when there is one, else the CPU; a CUDA
  device that is not there is a `DeviceError` naming what to use instead.
- `sync`: wait for queued device work before reading a clock (a no-op on a CPU).
- `versions`: the versions and hardware a figure was measured with, recorded by export sidecars
  and bench JSON alike, so an artifact and a benchmark of it describe their machine the same way.
"""

from __future__ import annotations

import contextlib
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import numpy as np
import torch

from ptxfast.errors import PtxfastError

__all__ = ["DeviceError", "cpu_bf16", "resolve_device", "sync", "versions"]


class DeviceError(PtxfastError):
    """A device that is not there; the message says what to use instead."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """ "auto" (or None) → the first CUDA GPU when there is one, else the CPU; "cpu", "cuda",
    "cuda:N" as given, an error when CUDA is asked for and not available."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {dev} asked for but CUDA is not available "
            "(torch.cuda.is_available() is False); use --device cpu"
        )
    return dev


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_bf16() -> str | None:
    """The CPU's native bf16 support (e.g. "avx512_bf16, amx_bf16"), or None without it."""
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
                break
    found = [f for f in ("avx512_bf16", "amx_bf16", "bf16") if f in flags]
    return ", ".join(found) or None


def versions(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where and with what a figure was measured: versions of ptxfast and the libraries it runs
    on, the accelerator and its driver, the CPU and its bf16 support, the load."""
    from ptxfast import __version__
    from ptxfast.inference import onnx_graph, trt

    device = torch.device(device)
    cuda = device.type == "cuda"
    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ptxfast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "segmentation_models_pytorch": _version("segmentation-models-pytorch"),
        "pydicom": _version("pydicom"),
        "numpy": np.__version__,
        **trt.versions(),
        **onnx_graph.versions(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "driver": _driver() if cuda else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_bf16(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        env["load_before"] = [round(v, 2) for v in os.getloadavg()]
    return env


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # no NVML, no driver: the figure simply has no driver version
        return None
