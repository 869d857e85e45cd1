"""What a scoring run did and how fast: `ScoreSummary` (the `--json` file), made once by
`build` from the engine's account of its run (`stats.EngineStats`) and the counts read back
from the ledger, and `print_summary`, the table `ptxfast score` prints.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ptxfast.data.eligibility import reason_of
from ptxfast.files import json_clean
from ptxfast.safe_text import visible
from ptxfast.score import speed
from ptxfast.score.config import ScoreConfig
from ptxfast.score.ledger import read_rows
from ptxfast.score.stats import EngineStats, LoopStats

if TYPE_CHECKING:
    from ptxfast.score.job import Job

__all__ = ["Counts", "ScoreSummary", "build", "count", "print_summary"]


@dataclass
class ScoreSummary:
    """What a scoring run did and how fast; `as_dict()` is the `--json` file."""

    root: str
    out: str
    model: str  # the artifact's model name
    artifact: str | None  # its sidecar, None for a predictor passed in
    backend: str
    precision: str
    device: str
    batch_size: int
    workers: int
    threads: int  # torch intra-op threads per model lane (CPU) / of the scoring process
    shard: tuple[int, int]
    files: int = 0  # inputs in this shard (scored now, failed now, or already in the CSV)
    already: int = 0  # rows found in the CSV by --resume
    scored: int = 0
    failed: int = 0
    skipped: int = 0  # files that are not images (and do not claim to be)
    positives: int = 0
    # Rows refused by the eligibility rule (not chest radiographs), counted apart from
    # `failed`; `eligibility` holds the rule, these counts by reason, and the files scored on
    # no evidence this run (PNG/JPEG, silent headers).
    not_eligible: int = 0
    eligibility: dict[str, Any] = field(default_factory=dict)
    # How the artifact labels (`operating.describe`) and its sidecar's operating point.
    operating_point: str = ""
    operating_point_detail: dict[str, Any] | None = None
    torn_line_dropped: bool = False
    masks_written: int = 0
    segs_written: int = 0
    seg_not_dicom: int = 0  # positives read from PNG/JPEG: mask PNGs but no DICOM SEG
    srs_written: int = 0
    sr_not_dicom: int = 0  # scored PNG/JPEG inputs, which get no DICOM SR
    # Inputs whose output names (SOPInstanceUID or input path) were unsafe and replaced by a
    # hash of the input's path (writer.safe_output_path).
    names_replaced: int = 0
    # pydicom/highdicom warnings and log records raised while writing SEG and SR: they may
    # quote header values (a patient's name), so they are counted here and never printed.
    library_messages: int = 0
    output_errors: list[str] = field(default_factory=list)
    output_workers: int = 0  # processes that wrote those outputs; 0: threads of the run's process
    skipped_examples: list[str] = field(default_factory=list)
    worker_restarts: int = 0
    seconds: float = 0.0  # wall time of the whole call
    setup_seconds: float = 0.0  # finding files, loading and warming the model
    loop_seconds: float = 0.0  # first batch asked for → last row written
    batches: int = 0
    images_per_s: float | None = None  # images scored / loop_seconds
    # Throughput once the pipeline is full: batches decoded ahead during setup are left out;
    # None for runs too short to time that way (images_per_s then stands for it).
    steady_images_per_s: float | None = None
    # p50/p90/p95/p99 per batch, from the decoded batch reaching the scorer to its rows written
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    time_s: dict[str, float] = field(default_factory=dict)  # decode/wait/transfer/compute/write
    gpu: dict[str, Any] | None = None
    lanes: int = 1  # batches the model runs at once (CPU: one per core, one thread each)
    # The predictor alone on a preloaded batch of the run's size: on a CPU the best of the
    # run's lanes x threads and one lane on every core, so the ratio is against the fastest
    # the model goes alone.
    model_only_images_per_s: float | None = None
    model_only_config: str | None = None  # the best entry of model_only_by_config
    model_only_by_config: dict[str, float] = field(default_factory=dict)  # "2 lanes x 1 thread"
    ratio: float | None = None  # steady end-to-end / model-only
    engine: str = "local"  # or "ray" (ptxfast.score.engine_ray)
    # --engine ray: address, nodes, cpus, gpus, decoders, actors (asked for), actor_processes
    # (that returned rows: more than actors after a restart), duplicates_dropped
    cluster: dict[str, Any] | None = None
    # What a CPU can reach when its decoders share the model's cores: 1 / (1/M + D/c), with M
    # the model-only images/s, D the decoders' CPU seconds per image (process CPU time in the
    # workers, not wall) and c the cores; and the end-to-end rate as a share of it.
    decode_cpu_s_per_image: float | None = None
    cores: int | None = None
    shared_core_bound_images_per_s: float | None = None
    bound_share: float | None = None
    # The share of those cores other processes took while the decoders ran: the bound counts
    # every core as the run's, so where decoding sets the pace the run falls short of the bound
    # by about this much on a shared machine (None where not measured).
    others_cpu_share: float | None = None
    # --send: per target, results acknowledged this run, by earlier runs, left unsent, and
    # why (senders.Sender.finish).
    sent: list[dict[str, Any]] = field(default_factory=list)
    # --decoder gpu: the decoder, frames decoded on the GPU and on the CPU of the scoring
    # process, its seconds, the (syntax, bits) pairs whose GPU decode differed from the CPU's.
    gpu_decode: dict[str, Any] | None = None
    # Decoding: "by_syntax" {transfer syntax: files, files/s per core (CPU time in the
    # workers)}, "decoders_to_keep_busy" (decoding processes that would feed the model at its
    # model-only rate), "sizing" (the decode/compute measurement that chose `workers`, None when
    # they were asked for or a GPU run).
    decoding: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN as null)."""
        return json_clean(asdict(self))


@dataclass
class Counts:
    """This run's files as the CSV records them."""

    scored: int = 0
    failed: int = 0
    positives: int = 0
    not_eligible: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # not eligible, by reason


def count(csv_path: Path, paths: set[str]) -> Counts:
    """Scored / failed / not eligible / positives of this run's files, read back from the CSV
    (the record)."""
    c = Counts()
    for row in read_rows(csv_path):
        if row[0] not in paths:
            continue
        if row[2]:
            c.scored += 1
            c.positives += row[3] == "1"
        elif (reason := reason_of(row[5])) is not None:
            reason = visible(reason)  # a header value: printed and written as JSON
            c.not_eligible += 1
            c.reasons[reason] = c.reasons.get(reason, 0) + 1
        else:
            c.failed += 1
    c.reasons = dict(sorted(c.reasons.items()))
    return c


def build(job: Job, stats: EngineStats, sent: list[dict[str, Any]]) -> ScoreSummary:
    """The run's summary, made once at its end from what the engine returned, the counts the
    ledger holds and what `--send` delivered; `seconds` is the call's wall time up to now."""
    from ptxfast.timing import latency_ms  # (torch: imported by the engine that ran already)

    config, found, todo = job.config, stats.found, stats.todo
    counts = count(job.preds.path, {found.inputs[i] for i in todo})
    loop = stats.loop
    eligibility: dict[str, Any] = {"rule": config.eligibility}
    if loop.unchecked is not None:
        eligibility["unchecked"] = loop.unchecked
    eligibility.update(
        not_eligible=counts.not_eligible,
        eligible=counts.scored + counts.failed,
        reasons=counts.reasons,
    )
    figures = _speed_figures(loop, counts.scored, stats.setup.lanes)
    return ScoreSummary(
        root=config.source,
        out=str(config.out),
        batch_size=config.batch_size,
        shard=config.shard,
        files=len(found.inputs),
        already=len(found.inputs) - len(todo),
        skipped=len(found.skipped),
        skipped_examples=[visible(p) for p in found.skipped[:5]],
        torn_line_dropped=job.preds.torn,
        scored=counts.scored,
        failed=counts.failed,
        positives=counts.positives,
        not_eligible=counts.not_eligible,
        eligibility=eligibility,
        **asdict(stats.setup),
        **asdict(stats.outputs),
        **figures,
        worker_restarts=loop.worker_restarts,
        time_s=loop.times,
        latency_ms=latency_ms(loop.latencies),
        gpu=loop.gpu,
        cluster=loop.cluster,
        gpu_decode=loop.gpu_decode,
        decoding=_decoding_figures(loop, figures["model_only_images_per_s"]),
        sent=sent,
        seconds=time.perf_counter() - job.t_start,
    )


def _speed_figures(loop: LoopStats, scored: int, lanes: int) -> dict[str, Any]:
    """The loop's rates, the model alone (its best configuration), their ratio and, where a
    CPU's decoding cost was measured, the shared-core bound."""
    steady = speed.steady(loop.marks, loop.t_loop, loop.ahead, lanes)
    overall = scored / loop.seconds if scored and loop.seconds > 0 else None
    by = loop.model_only
    best = max(by, key=by.__getitem__) if by else None
    model_only = by[best] if best is not None and by[best] > 0 else None
    rate = steady or overall
    figures = dict(
        loop_seconds=loop.seconds,
        batches=len(loop.marks),
        images_per_s=overall,
        steady_images_per_s=steady,
        model_only_images_per_s=model_only,
        model_only_config=best if model_only is not None else None,
        model_only_by_config=dict(by),
        ratio=rate / model_only if rate and model_only else None,
    )
    if loop.decode_cpu_s_per_image is not None and loop.cores:
        bound = speed.shared_core_bound(model_only, loop.decode_cpu_s_per_image, loop.cores, rate)
        figures.update(asdict(bound), others_cpu_share=loop.others_cpu_share)
    return figures


def _decoding_figures(loop: LoopStats, model_only: float | None) -> dict[str, Any]:
    """The loop's decoding figures, with the decoders that would keep the model busy where a
    decoding cost per file was measured."""
    from ptxfast.score import sizing  # (torch: a writing process imports this module without)

    decoding = dict(loop.decoding)
    if "by_syntax" in decoding and loop.decode_cpu_s_per_image is not None:
        decoding["decoders_to_keep_busy"] = sizing.decoders_to_keep_busy(
            model_only, loop.decode_cpu_s_per_image
        )
    return decoding


# ------------------------------------------------------------------------ the table


def _rate(v) -> str:
    return "—" if v is None else f"{v:.1f} images/s"


def _ms(v) -> str:
    return "—" if v is None else f"{v:.1f}"


def _num(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def print_summary(s: ScoreSummary, config: ScoreConfig, notes: Console) -> None:
    """The summary table on stdout; the torn-line note and output warnings on `notes`."""
    table = Table(title=f"scored {s.root}", show_header=False)
    table.add_column(justify="right", style="bold")
    table.add_column()
    json_path = config.summary_json
    csv_row = ("CSV", str(s.out) + (f", JSON {json_path}" if json_path else ""))
    rows = (*_what(s), *_speed(s), *_decoding(s), *_time(s), *_outputs(s, config), csv_row)
    for name, value in rows:
        # Text, not markup: names and header values in it must not become styles or links.
        table.add_row(name, Text(visible(value)))
    Console().print(table)
    if s.torn_line_dropped:
        notes.print("note: dropped a torn last line of the CSV and scored that file again")
    for line in s.output_errors[:10]:
        notes.print(Text.assemble(("warning:", "yellow"), " ", visible(line)), highlight=False)
    if len(s.output_errors) > 10:
        notes.print(f"[yellow]warning:[/] {len(s.output_errors) - 10} more output errors")


def _what(s: ScoreSummary) -> list[tuple[str, str]]:
    """Model, operating point, files, eligibility and positives."""
    shard_note = f", shard {s.shard[0]}/{s.shard[1]}" if s.shard[1] > 1 else ""
    files = (
        f"{s.files} inputs{shard_note}: {s.scored} scored, {s.failed} failed"
        + (f", {s.not_eligible} not eligible" if s.not_eligible else "")
        + (f", {s.already} already in the CSV" if s.already else "")
        + f"; {s.skipped} other files skipped"
    )
    el = s.eligibility
    reasons = ", ".join(f"{n} {r}" for r, n in el.get("reasons", {}).items())
    eligibility = (
        f"{el.get('rule')}: {s.not_eligible} not chest radiographs"
        + (f" ({reasons})" if reasons else "")
        + (
            f"; {el['unchecked']} scored unchecked (no header to say)"
            if el.get("unchecked")
            else ""
        )
    )
    return [
        ("model", f"{s.model} ({s.backend} {s.precision}) on {s.device}"),
        ("operating point", s.operating_point),
        ("files", files),
        ("eligibility", eligibility),
        ("positives", str(s.positives)),
    ]


def _speed(s: ScoreSummary) -> list[tuple[str, str]]:
    """End-to-end throughput (and the cluster), model only, the shared-core bound."""
    rows = _throughput(s)
    if s.model_only_images_per_s is not None:
        by = s.model_only_by_config
        per = ", ".join(f"{v:.1f} at {k}" for k, v in by.items()) if len(by) > 1 else ""
        ratio = f"; end to end / model only = {s.ratio:.2f}" if s.ratio is not None else ""
        rows.append((
            "model only",
            f"{_rate(s.model_only_images_per_s)} (batch {s.batch_size}"
            + (f"; {per}" if per else "")
            + f"){ratio}",
        ))  # fmt: skip
    if s.shared_core_bound_images_per_s is not None:
        share = f"; end to end = {s.bound_share:.0%} of it" if s.bound_share is not None else ""
        rows.append((
            "shared-core bound",
            f"{_rate(s.shared_core_bound_images_per_s)} = 1 / (1/M + D/c): model only M, decoding "
            f"D {s.decode_cpu_s_per_image * 1000:.1f} ms CPU per image, c {s.cores} cores{share}"
            + (
                f"; other processes took {s.others_cpu_share:.0%} of the cores while it decoded"
                if s.others_cpu_share is not None
                else ""
            ),
        ))  # fmt: skip
    lat = s.latency_ms
    rows.append((
        "batch latency",
        f"p50 {_ms(lat.get('p50'))} / p95 {_ms(lat.get('p95'))} / p99 {_ms(lat.get('p99'))} ms",
    ))  # fmt: skip
    return rows


def _decoding(s: ScoreSummary) -> list[tuple[str, str]]:
    """Decoding speed by transfer syntax, the decoders the model would need, how they were
    sized, and what the GPU decoded."""
    d = s.decoding
    rows = []
    per = d.get("by_syntax") or {}
    if per:
        rows.append((
            "decoding",
            "; ".join(
                f"{name} {v['files_per_s_per_core']:.1f} files/s per core ({v['files']})"
                for name, v in per.items()
            ),
        ))  # fmt: skip
    need, sized = d.get("decoders_to_keep_busy"), d.get("sizing")
    if need is not None or sized:
        chosen = (
            f"{s.workers} decoder(s) from D {sized['decode_ms']:.1f} ms decode vs C "
            f"{sized['compute_ms']:.1f} ms model CPU per image on {sized['cores']} cores"
            if sized
            else f"{s.workers} decoder(s) as asked"
        )
        busy = f"{need} decoder(s) would keep the model busy; " if need is not None else ""
        rows.append(("decoders", busy + "this run: " + chosen))
    g = s.gpu_decode
    if g:
        off = "; GPU off for " + ", ".join(g["turned_off"]) if g["turned_off"] else ""
        rows.append((
            "GPU decoding",
            f"{g['decoder']}: {g['gpu_frames']} frames on the GPU, {g['cpu_frames']} on the CPU "
            f"of this process, {g['seconds']:.1f} s{off}",
        ))  # fmt: skip
    return rows


def _throughput(s: ScoreSummary) -> list[tuple[str, str]]:
    end_to_end = _rate(s.steady_images_per_s or s.images_per_s)
    if s.cluster is None:
        return [(
            "throughput",
            f"{end_to_end} end to end (batch {s.batch_size}, "
            f"{s.workers} decoding worker(s), "
            + (f"{s.lanes} model lane(s) x {s.threads} thread(s))" if s.device == "cpu" else "1 lane)"),
        )]  # fmt: skip
    c = s.cluster
    ray = (
        f"{c['nodes']} node(s), {c['cpus']:g} CPUs, {c['gpus']:g} GPUs at {c['address']}: "
        f"{c['decoders']} decoder(s), {c['actors']} model actor(s)"
        + (f" x {s.threads} thread(s)" if s.device == "cpu" else " on GPUs")
        + (f", {c['actor_processes']} actor processes" if c["actor_processes"] > c["actors"] else "")
        + (f", {c['duplicates_dropped']} repeated rows dropped" if c["duplicates_dropped"] else "")
    )  # fmt: skip
    throughput = (
        f"{end_to_end} end to end once the actors run "
        f"(batch {s.batch_size}); {_rate(s.images_per_s)} over the whole pass"
        + (
            f", of which {c['first_rows_s']:.1f} s before the first rows (starting the actors)"
            if c["first_rows_s"] is not None
            else ""
        )
    )
    return [("ray", ray), ("throughput", throughput)]


def _time(s: ScoreSummary) -> list[tuple[str, str]]:
    """Where the time went, in all and per image, and the GPU's figures."""
    t = s.time_s
    rows = [(
        "time",
        f"{s.seconds:.1f} s in all ({s.setup_seconds:.1f} s setup); decode {t['decode']:.1f} s "
        f"({'in workers' if s.workers else 'in this process'}), waiting for data {t['wait']:.1f} s, host→device {t['transfer']:.2f} s, "
        f"compute {t['compute']:.1f} s, writing {t['write']:.2f} s",
    )]  # fmt: skip
    if s.scored:
        rows.append((
            "per image",
            f"decode {1000 * t['decode'] / (s.scored + s.failed):.1f} ms (decoder wall time), compute "
            f"{1000 * t['compute'] / s.scored:.1f} ms",
        ))  # fmt: skip
    if s.gpu:
        g = s.gpu
        rows.append((
            "GPU",
            f"{g['name']}: utilisation {_num(g['util_mean'], '.0f')}% mean / "
            f"{_num(g['util_max'], '.0f')}% max, memory {_num(g['memory_used_max_mib'], '.0f')} MiB "
            f"max, power {_num(g['power_mean_w'], '.0f')} W mean",
        ))  # fmt: skip
    return rows


def _outputs(s: ScoreSummary, config: ScoreConfig) -> list[tuple[str, str]]:
    """What was written besides the CSV."""
    masks_dir, seg_dir, sr_dir = config.masks_dir, config.seg_dir, config.sr_dir
    if not (masks_dir or seg_dir or sr_dir):
        return []
    outs = []
    if masks_dir:
        outs.append(f"{s.masks_written} PNG mask + overlay pairs in {masks_dir}")
    if seg_dir:
        outs.append(f"{s.segs_written} DICOM SEG in {seg_dir}")
        if s.seg_not_dicom:
            outs.append(f"{s.seg_not_dicom} positive PNG/JPEG inputs get no SEG")
    if sr_dir:
        outs.append(f"{s.srs_written} DICOM SR in {sr_dir}")
        if s.sr_not_dicom:
            outs.append(f"{s.sr_not_dicom} PNG/JPEG inputs get no SR")
    if s.library_messages:
        outs.append(
            f"{s.library_messages} pydicom/highdicom warning(s) about header values counted, "
            "not shown (they may quote patient data)"
        )
    if s.names_replaced:
        outs.append(
            f"{s.names_replaced} input(s) named by a hash of their path (their "
            "SOPInstanceUID or path was not a safe file name)"
        )
    by = f"{s.output_workers} process(es)" if s.output_workers else "threads of this process"
    rows = [("outputs", "; ".join(outs) + f" (written by {by})")]
    for t in s.sent:
        left = f", {t['left']} not sent ({t['error']})" if t["error"] else ""
        already = f", {t['already']} sent before" if t["already"] else ""
        rows.append(("sent", f"{t['sent']} to {t['target']}{already}{left}"))
    return rows
