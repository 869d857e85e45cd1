"""What a benchmark run is asked to do: `BenchConfig`, the defaults per device type, and the
check of the settings that `run_bench` applies before it measures anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptxfast.errors import PtxfastError

__all__ = ["CPU_DEFAULTS", "GPU_DEFAULTS", "PARITY_BATCH", "BenchConfig", "BenchError", "settings"]


class BenchError(PtxfastError):
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


# Defaults per device type: (batch sizes, input size, warm-up, timed iters, repeats, parity
# images, stage files). The CPU ones keep a no-argument run on 2 cores under 3 minutes.
GPU_DEFAULTS = dict(
    batch_sizes=(1, 8, 32, 64), size=512, warmup=5, iters=20, repeats=3, parity_n=64, stage_n=24
)
CPU_DEFAULTS = dict(
    batch_sizes=(1, 8), size=128, warmup=2, iters=4, repeats=2, parity_n=32, stage_n=8
)
PARITY_BATCH = 8  # images per batch of the parity set


def settings(cfg: BenchConfig, gpu: bool) -> dict[str, Any]:
    """The figures of the run (`GPU_DEFAULTS` keys): `cfg`'s where given, else the device type's
    default; a BenchError naming the option for a value that cannot be used."""
    d = GPU_DEFAULTS if gpu else CPU_DEFAULTS
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
