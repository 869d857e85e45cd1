"""GPU telemetry through NVML: utilisation, memory and power sampled by a background thread.

`GpuSampler` polls the GPU a torch device runs on (matched by PCI bus id, so CUDA_VISIBLE_DEVICES
reordering cannot pick the wrong card) every `interval` seconds while a job runs and summarises
what it saw. Without a CUDA device, without the `pynvml` module (nvidia-ml-py) or when NVML does
not answer, the sampler is inert and its summary fields are None: telemetry never fails a job.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class GpuStats:
    """What NVML reported over a job; a field is None where NVML did not answer it."""

    name: str | None = None
    samples: int = 0
    util_mean: float | None = None  # % of time a kernel ran, averaged over the samples
    util_max: float | None = None
    memory_used_max_mib: float | None = None  # device-wide, all processes
    memory_total_mib: float | None = None
    power_mean_w: float | None = None
    power_max_w: float | None = None
    energy_j: float | None = None  # from the board's energy counter where it has one

    def as_dict(self) -> dict[str, Any]:
        """A flat dict for JSON."""
        return asdict(self)


def _nvml():
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # module missing, no driver, no GPU: telemetry is optional
        return None


def _handle(nvml, device: torch.device):
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        try:
            domain = getattr(props, "pci_domain_id", 0)
            dev = getattr(props, "pci_device_id", 0)
            return nvml.nvmlDeviceGetHandleByPciBusId_v2(f"{domain:08X}:{bus:02X}:{dev:02X}.0")
        except Exception:
            pass  # fall back to the index, right unless CUDA_VISIBLE_DEVICES reorders cards
    return nvml.nvmlDeviceGetHandleByIndex(index)


class GpuSampler:
    """Context manager sampling one GPU in a daemon thread; `.stats` summarises after exit.

    Does nothing (and `.stats` has only None fields) unless `device` is a CUDA device and NVML
    is available.
    """

    def __init__(self, device: torch.device | str, interval: float = 0.1) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.stats = GpuStats()
        self._nvml = None
        self._handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._util: list[float] = []
        self._mem: list[float] = []
        self._power: list[float] = []
        self._energy0: float | None = None

    @property
    def active(self) -> bool:
        """True when NVML answers for the device."""
        return self._handle is not None

    def __enter__(self) -> GpuSampler:
        if self.device.type != "cuda":
            return self
        self._nvml = _nvml()
        if self._nvml is None:
            return self
        try:
            self._handle = _handle(self._nvml, self.device)
            name = self._nvml.nvmlDeviceGetName(self._handle)
            self.stats.name = name.decode() if isinstance(name, bytes) else str(name)
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            self.stats.memory_total_mib = info.total / 2**20
        except Exception:
            self._handle = None
            return self
        self._energy0 = self._energy()
        self._thread = threading.Thread(target=self._run, name="ptxfast-nvml", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()  # at least one sample even for a job shorter than the interval
        s = self.stats
        s.samples = len(self._mem)
        if self._util:
            s.util_mean = sum(self._util) / len(self._util)
            s.util_max = max(self._util)
        if self._mem:
            s.memory_used_max_mib = max(self._mem)
        if self._power:
            s.power_mean_w = sum(self._power) / len(self._power)
            s.power_max_w = max(self._power)
        end = self._energy()
        if self._energy0 is not None and end is not None:
            s.energy_j = (end - self._energy0) / 1000.0
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass

    def _energy(self) -> float | None:
        try:  # millijoules since driver load (Volta and newer)
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:
            return None

    def _sample(self) -> None:
        nvml, h = self._nvml, self._handle
        for read, into in (
            (lambda: nvml.nvmlDeviceGetUtilizationRates(h).gpu, self._util),
            (lambda: nvml.nvmlDeviceGetMemoryInfo(h).used / 2**20, self._mem),
            (lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0, self._power),
        ):
            try:
                into.append(float(read()))
            except Exception:
                pass  # a query this board or driver does not support: leave it None

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            self._sample()
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - t0)))
