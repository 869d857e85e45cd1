"""The benchmark run: `run_bench(BenchConfig(...))` resolves the model and the plan of
variants, prepares the parity set, the stage inputs and the eager fp32 reference, then measures
each variant in turn. A variant that cannot run, or fails, becomes rows that say why, and the
others go on; the report files are rewritten after each row."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ptxfast.benchmarking.config import PARITY_BATCH, BenchConfig, BenchError, settings
from ptxfast.benchmarking.measure import measure
from ptxfast.benchmarking.parity import (
    ParitySet,
    Reference,
    agreement_row,
    eager_reference,
    labelled_set,
)
from ptxfast.benchmarking.plan import (
    VARIANTS,
    Source,
    Unavailable,
    build_variant,
    plan_variants,
    resolve_source,
)
from ptxfast.benchmarking.render import to_markdown
from ptxfast.benchmarking.results import (
    PARITY_KEYS,
    BenchReport,
    first_line,
    keyed,
    row,
    set_speedups,
)
from ptxfast.benchmarking.stages import StageInputs, stage_inputs, stage_row
from ptxfast.environment import resolve_device, versions
from ptxfast.files import write_json, write_text
from ptxfast.score.pipeline import default_workers
from ptxfast.timing import INPUT_BUFFERS

__all__ = ["run_bench"]

Plan = list[tuple[str, str | None, str]]  # plan_variants' (variant, reason, status)


def run_bench(cfg: BenchConfig, say: Callable[[str], None] = lambda _: None) -> BenchReport:
    """Benchmark one model on each backend variant; see the package docstring.

    Raises a PtxfastError (BenchError, DeviceError, ArtifactError) for what cannot start (a bad
    option, a missing checkpoint, an unreadable artifact); anything that
    fails later is recorded in the report and the run goes on.
    """
    start = time.perf_counter()
    dev = resolve_device(cfg.device)
    gpu = dev.type == "cuda"
    figures = settings(cfg, gpu)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        src = resolve_source(cfg, gpu, say)
        if src.size < 32 or src.size % 32:
            raise BenchError(f"size {src.size} must be a multiple of 32 (U-Net strides)")
        plan = plan_variants(cfg.backends, dev, has_artifact=src.sidecar is not None)
        report = BenchReport(
            environment=versions(dev),
            config=_config_record(cfg, figures, plan),
            model=src.describe(),
        )
        run = _Run(cfg, figures, dev, src, report, start, say)
        run.prepare()
        for variant, reason, status in plan:
            run.variant(variant, reason, status)
        return run.finish()
    finally:
        torch.set_num_threads(threads_before)


def _config_record(cfg: BenchConfig, figures: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The report's "config": the settings the run used and what it planned."""
    return {
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in figures.items()},
        "variants": [v for v, _, _ in plan],
        "inductor_mode": cfg.inductor_mode or "default",
        "seed": cfg.seed,
        "parity_batch": PARITY_BATCH,
        "input_buffers": INPUT_BUFFERS,
    }


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class _Run:
    """One run's state: what it measures with, and the report it fills and saves."""

    cfg: BenchConfig
    figures: dict[str, Any]  # `settings(cfg)`: batch sizes, warm-up, iters, repeats, ...
    device: torch.device
    src: Source
    report: BenchReport
    start: float
    say: Callable[[str], None]
    parity_set: ParitySet | None = None
    stages: StageInputs | None = None  # None: no stage breakdown (--stage-files 0)
    reference: Reference | None = None  # None: no parity (no fp32 model, or no parity set)

    def save(self) -> None:
        """Rewrite the JSON and markdown files with what has been measured so far."""
        set_speedups(self.report.rows)
        self.report.seconds = time.perf_counter() - self.start
        if self.cfg.json_out is not None:
            write_json(self.cfg.json_out, self.report.as_dict())
        if self.cfg.markdown_out is not None:
            write_text(self.cfg.markdown_out, to_markdown(self.report.as_dict()))

    def prepare(self) -> None:
        """The parity set, the stage inputs (real files decoded once, the same for every
        variant) and the eager fp32 reference."""
        self.save()  # the files exist (and say what is planned) before the first measurement
        self.parity_set = labelled_set(self.cfg, self.src, self.figures["parity_n"], self.say)
        self.report.data = self.parity_set.info
        if self.figures["stage_n"] > 0:
            self.stages = stage_inputs(
                self.parity_set.paths, self.report.data.get("data"), self.figures["stage_n"],
                self.src.size, seed=self.cfg.seed, workers=default_workers(self.device),
                say=self.say,
            )  # fmt: skip
            self.report.data.update(
                stage_files=self.stages.what, decode_s_per_image=self.stages.decode_s_per_image
            )
        self.save()
        batches = self.parity_set.batches
        if self.src.model is not None and batches:
            self.say("eager fp32 reference for parity")
            self.reference = eager_reference(self.src, self.device, batches, self.cfg.seed)
        elif not batches:
            self.report.notes.append("no parity set (--parity-n 0)")
        else:
            self.report.notes.append(f"no parity: {self.src.no_model}")

    def variant(self, variant: str, reason: str | None, status: str) -> None:
        """Build, time, compare and break down one variant, or record why it did not run."""
        from ptxfast.inference.runtime import PredictorError

        base = self._base(variant)
        if reason is not None:
            return self._not_run(base, status, reason)
        self.say(f"{variant}: building")
        t0 = time.perf_counter()
        try:
            predictor = self._build(variant)
        except (Unavailable, PredictorError) as err:
            return self._not_run(base, "unavailable", str(err))
        except Exception as err:  # a backend that breaks is reported; the others go on
            self.say(f"{variant}: failed to build — {first_line(err)}")
            return self._not_run(base, "failed", first_line(err), parity_error="not built")
        build_s = time.perf_counter() - t0
        if self.reference is not None and predictor is self.reference.predictor:
            build_s = self.reference.build_s  # the reference serves as the eager variant
        base["path"] = predictor.path
        timed = self._time(variant, predictor, base, build_s)
        ps, ref = self.parity_set, self.reference
        ref_probs = ref.probs if ref is not None else None
        self.report.parity.append(agreement_row(predictor, ps.batches, ps.labels, ref_probs, base))
        if self.stages is not None and self.stages.images is not None and timed:
            self.report.stages.append(
                stage_row(predictor, self.stages, max(timed), base["variant"])
            )
        del predictor
        _free(self.device)
        self.save()

    def finish(self) -> BenchReport:
        """Mark the report complete, with the load after the run, and save it."""
        with contextlib.suppress(OSError):
            self.report.environment["load_after"] = [round(v, 2) for v in os.getloadavg()]
        self.report.complete = True
        self.save()
        return self.report

    def _base(self, variant: str) -> dict[str, Any]:
        """The keys every row of `variant` shares; an artifact's come from its sidecar."""
        backend, precision = VARIANTS.get(variant, (None, None))
        label = variant
        if variant == "artifact":
            sidecar = self.src.sidecar
            backend, precision, tta = sidecar.backend, sidecar.precision, sidecar.tta
            if tta != "none":
                # Its cost sits beside the plain graphs of the other rows; its parity is
                # against the plain eager model, so it includes what the averaging changes.
                label = f"artifact+{tta}"
                self.report.notes.append(
                    f"{label}: the artifact averages each image with its mirror ({tta} TTA, "
                    "2x compute); the other variants are the plain graph"
                )
        return dict(
            variant=label, backend=backend, precision=precision, model=self.src.name,
            size=self.src.size, device=str(self.device),
        )  # fmt: skip

    def _build(self, variant: str):
        if variant == "eager" and self.reference is not None:
            return self.reference.predictor
        return build_variant(variant, self.src, self.device, self.figures["batch_sizes"], self.cfg)

    def _not_run(
        self, base: dict[str, Any], status: str, error: str, parity_error: str | None = None
    ) -> None:
        """A variant that was not measured: its throughput and parity rows say why."""
        self.report.rows.append(row(**base, status=status, error=error))
        self.report.parity.append(
            keyed(PARITY_KEYS, **base, status=status, error=parity_error or error)
        )
        self.save()

    def _time(self, variant: str, predictor, base: dict[str, Any], build_s: float) -> list[int]:
        """One throughput row per batch size (failed ones too); the batch sizes measured."""
        f = self.figures
        timed = []
        for batch in f["batch_sizes"]:
            try:
                figures = measure(
                    predictor, batch, warmup=f["warmup"], iters=f["iters"],
                    repeats=f["repeats"], seed=self.cfg.seed,
                )  # fmt: skip
                done = row(**base, status="ok", build_s=build_s, **figures)
                timed.append(batch)
                self.say(
                    f"{variant} batch {batch}: {done['images_per_s']:.1f} images/s, "
                    f"p50 {done['latency_ms_p50']:.1f} ms/batch"
                )
            except Exception as err:
                self.say(f"{variant} batch {batch}: failed — {first_line(err)}")
                done = row(**base, status="failed", batch=batch, error=first_line(err))
                _free(self.device)
            self.report.rows.append(done)
            self.save()
        return timed
