"""One throughput row's figures for a predictor at a batch size: timing (`timing`), peak memory,
and on a GPU whose NVML answers, utilisation, power and energy per image (`ptxfast.telemetry`)."""

from __future__ import annotations

import sys
from typing import Any

import torch

from ptxfast.environment import sync
from ptxfast.timing import summarize_times, time_predictor

__all__ = ["PeakMemory", "energy_per_image", "measure"]


class PeakMemory:
    """Peak memory over a block: CUDA max_memory_allocated, or on a CPU the process's peak RSS
    (VmHWM reset through /proc/self/clear_refs; else the lifetime peak from getrusage)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib: float | None = None
        self.resident_mib: float | None = None
        self.source: str | None = None

    def __enter__(self) -> PeakMemory:
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
    with PeakMemory(dev) as mem:
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
