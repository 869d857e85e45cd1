"""`score_folder`: check a scoring request, load the model, open the ledger, run an engine.

Everything that can be refused is refused before a file is decoded: the options, the output
folders (a probe file is written in each), the artifact (its sha256, device and precision) and
the ledger (its lock, its header, a torn last line). Then the local engine
(`engine_local.run`) or the Ray engine (`engine_ray.run`) scores the files the ledger lacks,
and the run's summary is built once from what the engine returns (`summary.build`) and
written as JSON.
"""

from __future__ import annotations

import os
import time

from ptxfast.files import write_json
from ptxfast.score import engine_local, engine_ray, ledger, senders, summary
from ptxfast.score.config import ScoreConfig, ScoreError, check_masks
from ptxfast.score.job import Job, load
from ptxfast.score.summary import ScoreSummary

__all__ = ["Job", "load", "score_folder"]


def score_folder(
    config: ScoreConfig | str | os.PathLike, out: str | os.PathLike | None = None, **options
) -> ScoreSummary:
    """Score every image under a folder into its CSV; returns what happened and how fast.

    Give a `ScoreConfig`, or its fields: `score_folder(root, out, model=..., batch_size=...)`.
    See `ptxfast.score` for inputs, resume, shards and outputs.
    """
    if not isinstance(config, ScoreConfig):
        config = ScoreConfig(root=config, out=out, **options)
    t_start = time.perf_counter()
    config.check()
    ray_options = _check_engine(config)
    if config.url:  # an unreachable or refusing server stops the run before the model loads
        from ptxfast.score import dicomweb

        dicomweb.probe(config.pacs)
    source = _source(config)
    config.check_folders()
    preds = ledger.PredsCsv(config.out, config.resume, config.overwrite)
    # The model is loaded (sha256 checked, device and precision refused) before the CSV is
    # touched or a file decoded; on Ray its actors load it, and here only its bytes are checked.
    try:
        predictor = _predictor(config, source)
    except BaseException:  # the file it created goes, and the lock with it
        preds.discard()
        raise
    try:
        preds.open()
    except BaseException:
        preds.close()  # releases the lock too
        raise
    job = Job(config, preds, predictor, source, t_start)
    try:
        # A DICOMweb source's spool, and the --send targets, follow the rows into the CSV.
        with senders.connected(job) as after:
            if config.engine == "ray":
                stats = engine_ray.run(job, source, ray_options, config.device)
            else:
                stats = engine_local.run(job)
            sent = after()
        return _finish(job, summary.build(job, stats, sent))
    finally:
        preds.close()


def _check_engine(config: ScoreConfig):
    """The Ray options when `engine="ray"` (refused without Ray or with a loaded Predictor)."""
    if config.engine != "ray":
        return None
    from ptxfast.inference import runtime

    engine_ray.require_ray()
    options = config.ray or engine_ray.RayOptions()
    engine_ray.check_options(options)
    if isinstance(config.model, runtime.Predictor):
        raise ScoreError(
            "--engine ray loads the artifact in its model actors: pass its path, not a "
            "loaded Predictor"
        )
    return options


def _source(config: ScoreConfig):
    """The Predictor passed in, or the sidecar of the artifact asked for (mask output checked)."""
    from ptxfast.inference import artifact, runtime

    if isinstance(config.model, runtime.Predictor):
        if config.wants_masks:
            check_masks(config.model.kind, config.model.return_mask, repr(config.model), None)
        return config.model
    model = config.model
    sidecar = artifact.read_sidecar(
        artifact.latest_artifact(config.exports_dir) if model is None else model
    )
    if config.wants_masks:
        check_masks(
            sidecar.kind, sidecar.return_mask, str(sidecar.model_path), sidecar.export_command
        )
    return sidecar


def _predictor(config: ScoreConfig, source):
    from ptxfast.inference import artifact, runtime

    if config.engine == "ray":
        try:
            artifact.verify(source)
        except artifact.ArtifactError as err:
            raise ScoreError(str(err)) from None
        return None
    return source if isinstance(source, runtime.Predictor) else load(source, config.device)


def _finish(job: Job, made: ScoreSummary) -> ScoreSummary:
    """Write the --json file (every engine's last step)."""
    path = job.config.summary_json
    if path is not None:
        try:
            write_json(path, made.as_dict())
        except OSError as err:
            if ledger.is_write_error(err):
                raise ledger.write_failed(path, err) from None
            raise
    return made
