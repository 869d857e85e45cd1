"""What an engine hands back at the end of a run: how it set the run up (`Setup`), what its
loop measured (`LoopStats`), what the output files of the rows it committed came to
(`writer.OutputStats`) and which inputs it had. `summary.build` makes the run's one
`ScoreSummary` of them, after the engine has finished, so no figure depends on the order in
which another was filled in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptxfast.inference.spec import ArtifactSpec
    from ptxfast.score.inputs import Inputs
    from ptxfast.score.writer import OutputStats

__all__ = ["EngineStats", "LoopStats", "Setup", "operating_point", "stage_times"]


def stage_times() -> dict[str, float]:
    """Seconds per stage of the loop, each engine's and the summary's `time_s`."""
    return dict(decode=0.0, wait=0.0, transfer=0.0, compute=0.0, write=0.0)


@dataclass(frozen=True)
class Setup:
    """Who scored and how: the model, where it ran and the engine's parallelism."""

    model: str  # the artifact's model name
    artifact: str | None  # its sidecar, None for a predictor passed in
    backend: str
    precision: str
    device: str
    workers: int  # decoding workers (local) or decoder actors (Ray)
    threads: int
    lanes: int  # batches the model runs at once (local lanes, Ray model actors)
    operating_point: str
    operating_point_detail: dict[str, Any] | None
    setup_seconds: float  # the call's start → the loop's start
    output_workers: int = 0
    engine: str = "local"


def operating_point(spec: ArtifactSpec) -> tuple[str, dict[str, Any] | None]:
    """`Setup`'s operating point of an artifact: the line `operating.describe` makes of its
    sidecar, and the sidecar's `operating_point` as a plain dict (None without one)."""
    from ptxfast.inference.operating import describe

    op = spec.operating_point
    return describe(spec), dict(op) if op is not None else None


@dataclass
class LoopStats:
    """What an engine's loop measured, filled in as it runs."""

    t_loop: float = 0.0  # perf_counter when the first batch was asked for
    seconds: float = 0.0  # first batch asked for → last row written
    ahead: int = 0  # batches decoded before the loop started: left out of the steady rate
    # (time, images) per batch in order: local, when the batch reached the scorer (its arrivals
    # pace the run once the batches decoded ahead are used up); Ray, when its rows were written.
    marks: list[tuple[float, int]] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=stage_times)
    latencies: list[float] = field(default_factory=list)  # per batch, seconds
    worker_restarts: int = 0
    unchecked: int | None = None  # files scored on no evidence; None where not counted (Ray)
    gpu: dict[str, Any] | None = None
    model_only: dict[str, float] = field(default_factory=dict)  # images/s by configuration
    # A CPU's decoding cost, for the shared-core bound: CPU seconds per image and the cores.
    decode_cpu_s_per_image: float | None = None
    cores: int | None = None
    # The share of the cores other processes took while the decoders ran (speed.others_share);
    # None where not measured (a GPU, output-writing processes, not Linux).
    others_cpu_share: float | None = None
    cluster: dict[str, Any] | None = None  # --engine ray (see ScoreSummary.cluster)
    gpu_decode: dict[str, Any] | None = None  # --decoder gpu (see ScoreSummary.gpu_decode)
    # Decoding's "sizing" and "by_syntax" (see ScoreSummary.decoding); `summary.build` adds
    # "decoders_to_keep_busy", which needs the model-only rate.
    decoding: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineStats:
    """An engine's account of its run; `summary.build` turns it into the ScoreSummary."""

    setup: Setup
    loop: LoopStats
    outputs: OutputStats
    found: Inputs  # the shard's inputs
    todo: list[int]  # those scored this run (not already in the CSV)
