"""score and report: a folder of DICOMs to predictions, then to an HTML worklist."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.text import Text

from ptxfast.cli import app
from ptxfast.cli.app import DIR, FILE, CliError, cli, console, option
from ptxfast.safe_text import visible


class _FolderOrUrl(click.ParamType):
    """A folder (a Path), or an http(s) DICOMweb root (kept as the text it is)."""

    name = "FOLDER|URL"

    def convert(self, value, param, ctx):
        from ptxfast.score.pacs import is_url

        return value if is_url(value) else DIR.convert(value, param, ctx)


_DECODER = (
    "Where compressed DICOM frames are decoded: cpu (the decoding workers), gpu (nvImageCodec, "
    "batched, checked against the CPU per syntax; needs pip install 'ptxfast[gpu-decode]' and a "
    "CUDA device), auto (gpu where it can run)."
)


@cli.command("score")
@click.argument("folder", type=_FolderOrUrl())
@option(
    "--out",
    required=True,
    type=FILE,
    help="Predictions CSV: path,sop_instance_uid,probability,label,mask_area,error.",
)
@option(
    "--model",
    type=FILE,
    help="Artifact (model file or its .json sidecar) [default: the newest under --exports].",
)
@app.exports_option("Where the default artifact is looked for.")
@app.device_option()
@app.batch_size_option(16)
@app.workers_option(
    "Decoding processes [default: on a CPU sized from a decode measured against the model's "
    "compute (every core the model does not need when decoding dominates); all cores but one "
    "(max 16) with a GPU; 0 decodes in-process]."
)
@option(
    "--lanes",
    min=1,
    help="CPU: batches the model runs at once, side by side [default: one per core; one for "
    "ONNX Runtime and OpenVINO artifacts, which run their own threads].",
)
@app.threads_option(
    "CPU: torch threads per lane [default: 1, or the cores divided by --lanes]; the "
    "decoding workers share the cores."
)
@option("--resume", is_flag=True, help="Continue OUT: skip files it already has a row for.")
@option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing OUT (only an empty file or a ptxfast predictions CSV).",
)
@option(
    "--shard",
    default="1/1",
    help="K/N: score the K-th of every N files (i % N == K-1), one CSV per shard.",
)
@option(
    "--masks",
    "masks_dir",
    type=DIR,
    help="PNG mask and overlay per positive (needs an artifact exported with --return-mask).",
)
@option(
    "--dicom-seg",
    "seg_dir",
    type=DIR,
    help="DICOM Segmentation per positive DICOM, named <SOPInstanceUID>.dcm (a hash of its "
    "path when the UID is not a valid DICOM UID).",
)
@option(
    "--dicom-sr",
    "sr_dir",
    type=DIR,
    help="DICOM SR per scored DICOM (finding, probability, model; the SEG of a positive with "
    "--dicom-seg), named like the SEGs.",
)
@option(
    "--output-workers",
    min=0,
    help="Processes writing --masks, --dicom-seg and --dicom-sr files [default: one per core, "
    "at most 8; 0: two threads of the scoring process].",
)
@app.json_option("json_path", "Also write the summary as JSON.")
@option(
    "--model-only-iters",
    default=5,
    min=0,
    help="Batches timed for the model-only throughput (0: skip).",
)
@option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    help="local: this machine; ray: a Ray cluster (decoders on every CPU, one model actor per "
    "GPU or CPU lane), same CSV and --resume (needs pip install 'ptxfast[ray]').",
)
@option(
    "--address",
    help="--engine ray: the cluster (auto: the one `ray start` runs here; ray://host:10001) "
    "[default: Ray's, or a new cluster of this machine].",
)
@option(
    "--decoders",
    min=1,
    help="--engine ray: decoder actors [default: the CPUs the model actors leave, or "
    "CPUs / 8 without GPUs].",
)
@option(
    "--actors",
    min=1,
    help="--engine ray: model actors [default: one per GPU, or one per CPU without GPUs].",
)
@option(
    "--eligibility",
    type=click.Choice(["strict", "default", "off"]),
    default="default",
    help="Label chest radiographs only, read from each DICOM header before decoding: default "
    "refuses other modalities (CT, MR, US, SR...), lateral views and other body parts; strict "
    "also files whose header says nothing (PNG/JPEG); off scores every decodable image.",
)
@option(
    "--study",
    "studies",
    multiple=True,
    help="URL: score this StudyInstanceUID (repeat for more) [default: the studies whose "
    "modalities include CR, DX or DR].",
)
@option("--since", help="URL: only studies from this date on (YYYYMMDD).")
@option(
    "--send",
    multiple=True,
    help="Send every --dicom-sr and --dicom-seg file into its source's study on this target, "
    "once: a DICOMweb root (STOW-RS) or dicom://AET@host:port (C-STORE); repeat for more. "
    "Credentials: ~/.netrc or PTXFAST_DICOMWEB_USER/_PASSWORD/_TOKEN, never the URL.",
)
@option("--ae-title", default="PTXFAST", help="Our AE title for C-STORE (--send dicom://...).")
@option(
    "--ca-bundle",
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA certificates to verify https servers with [default: the system's].",
)
@option("--decoder", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", help=_DECODER)
def score_command(
    folder, out, model, exports, device, batch_size, workers, lanes, threads, resume, overwrite,
    shard, masks_dir, seg_dir, sr_dir, output_workers, json_path, model_only_iters, engine,
    address, decoders, actors, eligibility, studies, since, send, ae_title, ca_bundle,
    decoder,
) -> None:  # fmt: skip
    """Score every DICOM, PNG and JPEG under FOLDER, or on the DICOMweb server at URL, into one
    CSV row per file (per instance).

    \b
    Files are found recursively and sorted; errors (corrupt, truncated, not an image) are rows
    with an empty probability, never a stop. Rows are fsync'd batch by batch: after an
    interruption run the same command with --resume. N machines: --shard 1/N ... N/N, then
      head -n 1 preds-1.csv > preds.csv && tail -q -n +2 preds-*.csv >> preds.csv
    or one run over a Ray cluster: --engine ray (see README, "Scoring on a cluster").
    From a PACS, results sent back (see README, "Scoring from a PACS"):
      ptxfast score https://pacs/dicom-web --out preds.csv --dicom-sr sr --send https://pacs/dicom-web
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ptxfast import score
    from ptxfast.score import ledger, signals

    # A ScoreError or LedgerError (another run holds --out, a disk is full...) is a
    # PtxfastError: the command group shows it as one line, exit status 1.
    try:
        parts = score.parse_shard(shard)
        ray_options = None
        if engine == "ray":
            from ptxfast.score.engine_ray import RayOptions

            ray_options = RayOptions(address=address, decoders=decoders, actors=actors)
        elif address or decoders or actors:
            raise CliError("--address, --decoders and --actors go with --engine ray")
        config = score.ScoreConfig(
            root=folder, out=out, model=model, device=device, batch_size=batch_size,
            workers=workers, resume=resume, shard=parts, masks_dir=masks_dir,
            seg_dir=seg_dir, sr_dir=sr_dir, output_workers=output_workers,
            overwrite=overwrite, summary_json=json_path,
            exports_dir=exports, lanes=lanes, threads=threads,
            model_only_iters=model_only_iters, engine=engine, ray=ray_options,
            eligibility=eligibility, pacs=_pacs_options(studies, since, send, ae_title, ca_bundle),
            decoder=decoder,
        )  # fmt: skip
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("scoring", total=None)
            config.progress = lambda done, total: bar.update(task, completed=done, total=total)
            with signals.stop_on_signals():  # SIGTERM, Ctrl-C: stop between batches
                s = score.score_folder(config)
    except signals.Stopped as stop:
        kept = ledger.rows_kept(out)
        console.print(
            f"stopped by {stop.name}; {kept} rows kept; --resume continues", highlight=False
        )
        sys.exit(stop.exit_code)
    score.print_summary(s, config, console)
    from ptxfast.score.senders import failure_line

    unsent = failure_line(s.sent, config.out)
    if unsent:
        raise CliError(unsent)


def _pacs_options(studies, since, send, ae_title, ca_bundle):
    """The PACS options given, None when there are none (a folder, nothing sent)."""
    from ptxfast.score.pacs import PacsOptions

    given = studies or since or send or ca_bundle or ae_title != PacsOptions().ae_title
    return PacsOptions(
        studies=tuple(studies), since=since, send=tuple(send), ae_title=ae_title,
        ca_bundle=ca_bundle,
    ) if given else None  # fmt: skip


# ---------------------------------------------------------------- report
@cli.command("report")
@click.argument("preds", type=FILE)
@option("--out", type=FILE, help="The HTML file to write [default: report.html beside PREDS].")
@option(
    "--masks",
    "masks_dir",
    type=DIR,
    help="The run's --masks folder: overlays of the predicted masks on the cards.",
)
@app.json_option(
    "summary_json",
    "The run's --json summary: model, artifact sha256, threshold, images/s, scored folder.",
)
@option(
    "--root", type=DIR, help="The scored folder, for thumbnails [default: the one --json names]."
)
@option(
    "--top",
    default=48,
    min=0,
    help="Positives shown as cards with thumbnails; the rest are listed as text.",
)
@option("--page-size", default=200, min=1, help="Rows per page.")
def report_command(preds, out, masks_dir, summary_json, root, top, page_size) -> None:
    """Write a scoring run's worklist as one self-contained HTML file.

    \b
    Summary, a histogram of the probabilities, the positives by probability (the most probable
    with a thumbnail and the mask overlay), the failures with their errors, and the negatives.
    Images are embedded; the page fetches nothing from the network.
      ptxfast score dicoms/ --out preds.csv --masks masks/ --json score.json
      ptxfast report preds.csv --masks masks/ --json score.json --out report.html
    """
    from ptxfast import report

    r = report.build_report(
        preds, out or preds.with_name("report.html"), masks_dir=masks_dir,
        summary_json=summary_json, root=root, top=top, page_size=page_size,
    )  # fmt: skip
    for line in r.lines():
        console.print(Text(visible(line)), highlight=False)
    click.echo(str(r.path))
