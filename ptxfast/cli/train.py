"""train and evaluate: fit the eight models, then score them on the test split."""

from __future__ import annotations

from rich.console import Console

from ptxfast.cli import app
from ptxfast.cli.app import DIR, CliError, cli, console, option, warnings_shown


@cli.command("train")
@option(
    "--arch",
    required=True,
    help="Model name (rn34, eb3, rn34un, eb3un, rn34un+rn34, rn34un+eb3, eb3un+rn34, eb3un+eb3), "
    "a comma list of them, or all; several train in one process, segmenters before their "
    "cascades.",
)
@app.data_option("Dataset folder (CANDID-PTX or SIIM-ACR layout).")
@app.runs_option("Checkpoints and logs go to RUNS/<arch>/.")
@option(
    "--recipe",
    default="paper",
    help="paper, quick, or a path to a recipe .toml (train/paper.toml shows the format).",
)
@option("--epochs", min=1, help="Override the recipe's epochs.")
@app.size_option("Input side in pixels (multiple of 32).")
@app.batch_size_option(help="Override the recipe's batch size.")
@option("--lr", type=float, help="Override the recipe's learning rate.")
@app.device_option("cpu, cuda, cuda:1 (default: the recipe's, auto).", default=None)
@app.workers_option("DataLoader worker processes.")
@app.seed_option("Seed for weights init, data order and a new split.", default=None)
@option(
    "--weights",
    help="Initial weights: a state-dict file, 'imagenet' (from disk caches) or 'none'.",
)
@option("--resume", is_flag=True, help="Continue from RUNS/<arch>/last.pt.")
def train_command(arch, recipe, resume, **overrides) -> None:
    """Train one of the eight models (several, or all) with a recipe; writes RUNS/<arch>/best.pt.

    \b
    Cascades need their segmenter's RUNS/<seg>/best.pt. Under torchrun
    (torchrun --nproc_per_node N -m ptxfast train ...) training is data-parallel.
    """
    import os

    from ptxfast import training
    from ptxfast.data import records
    from ptxfast.training.render import results_table

    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 speaks
    # `overrides`: the recipe settings given as options (data, runs, epochs, size, batch_size,
    # lr, device, workers, seed, weights); None keeps the recipe's.
    with warnings_shown(records.DatasetWarning, live=True, speak=rank0, models_log=True):
        results = training.train_models(arch, recipe, resume=resume, console=console, **overrides)
    if rank0:
        Console().print(results_table(results, recipe))


# ---------------------------------------------------------------- evaluate
@cli.command("evaluate")
@app.runs_option("Folder of trained models (RUNS/<model>/best.pt).")
@app.data_option("Dataset folder [default: the one each checkpoint was trained on].")
@option(
    "--out",
    type=DIR,
    help="Where metrics.json, metrics.csv and the figures go [default: RUNS/eval].",
)
@option("--models", help="Comma-separated model names [default: every trained one of the eight].")
@app.device_option("auto, cpu, cuda or cuda:N.")
@app.batch_size_option(8)
@app.workers_option("DataLoader worker processes for decoding.", default=0)
@option(
    "--tune-cutoffs",
    is_flag=True,
    help="Also tune the segmenters' pixel threshold and min area on the validation split (by F1).",
)
@option(
    "--overlays",
    default=8,
    min=0,
    help="Images per mask-overlay figure (segmenters and cascades); 0 for none.",
)
@option(
    "--target-recall",
    "target_recalls",
    multiple=True,
    metavar="R",
    help="Operating point: the highest threshold whose validation recall is at least R, "
    "applied to test (repeatable; 'none' for no operating points) [default: 0.9 and 0.95].",
)
@option(
    "--bootstrap",
    "n_boot",
    default=2000,
    min=100,
    help="Stratified bootstrap resamples behind each 95% CI.",
)
def evaluate_command(
    runs,
    data,
    out,
    models,
    device,
    batch_size,
    workers,
    tune_cutoffs,
    overlays,
    target_recalls,
    n_boot,
) -> None:
    """Score the trained models on the test split the way the paper reports them.

    \b
    Each model at the size it was trained at: F1, recall, precision, specificity, ROC-AUC,
    confusion matrix, and Dice for segmenters and cascades. Labels by the paper's cut-offs:
    p > 0.5 for classifiers and cascades; more than 375 pixels (at 512², scaled by area)
    above 0.3 for segmenters. Besides them, operating points for target recalls chosen on
    the validation split, sensitivity, specificity, PPV, NPV, F1 and AUC with 95% bootstrap
    CIs, and temperature scaling fitted on validation (ECE before and after). Writes
    metrics.json, metrics.csv, confusion.png, roc.png, recall_f1.png, reliability.png and
    overlays_<model>.png, and RUNS/<model>/evaluation.json (thresholds and temperature, read
    by `ptxfast export --operating-point`).

    \b
    Examples:
      ptxfast evaluate --runs runs --target-recall 0.9
      ptxfast evaluate --target-recall 0.9 --target-recall 0.95 --tune-cutoffs
    """
    from ptxfast import evaluation
    from ptxfast.data import records
    from ptxfast.evaluation import render

    with warnings_shown(records.DatasetWarning):
        cfg = evaluation.EvalConfig(
            runs=runs,
            data=data,
            out=out,
            models=models,
            device=device,
            batch_size=batch_size,
            tune=tune_cutoffs,
            overlays=overlays,
            workers=workers,
            target_recalls=_target_recalls(target_recalls),
            n_boot=n_boot,
        )
        report = evaluation.run_evaluation(
            cfg, progress=lambda line: console.print(line, highlight=False)
        )
    Console().print(render.metrics_table(report))
    if any(r.operating_points for r in report.results):
        Console().print(render.operating_point_table(report))
    console.print(render.files_line(report), highlight=False)


def _target_recalls(values: tuple[str, ...]) -> tuple[float, ...]:
    """--target-recall values: numbers in (0, 1], or 'none'; nothing given means the defaults."""
    from ptxfast.evaluation import DEFAULT_TARGET_RECALLS

    if not values:
        return DEFAULT_TARGET_RECALLS
    if [v.lower() for v in values] == ["none"]:
        return ()
    out = []
    for v in values:
        try:
            r = float(v)
        except ValueError:
            r = -1.0
        if not 0 < r <= 1:
            raise CliError(f"--target-recall {v}: give a recall in (0, 1], e.g. 0.9, or none")
        out.append(r)
    return tuple(out)
