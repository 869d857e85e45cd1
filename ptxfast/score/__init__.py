"""Score a folder of chest X-rays with an exported model: one CSV row per file, never a crash.

`score_folder(ScoreConfig(root, out, model=...))` (or `score_folder(root, out, model=...)`)
finds the inputs under `root`, decodes them in worker processes while the model runs, and
appends one row per file to `out`:

    path,sop_instance_uid,probability,label,mask_area,error

- path: relative to `root`, with "/" separators (so shard CSVs and resumed runs agree);
- probability: the artifact's image probability (temperature-scaled when its operating point
  is calibrated); label: 1 when it exceeds the artifact's operating threshold (its sidecar's
  `operating_point`, else its recorded label threshold; `Predictor.label`); mask_area: pixels
  above the pixel threshold at the model's S×S input (empty for classifiers); error: one line
  when the file could not be scored (then probability, label and mask_area are empty).

Eligibility. Only chest radiographs get a label (`ptxfast.data.eligibility`): the decoding
worker checks the header it has just parsed — Modality, ViewPosition, BodyPartExamined —
before any pixel is decoded, and a file the rule refuses gets a row with an empty probability
and an error `not eligible: Modality CT (chest radiographs only; --eligibility off to score
anyway)`. Such rows are counted apart from failures (`not_eligible` in the summary, with the
rule and the reasons). `eligibility="strict"` also refuses files whose header says nothing,
"off" scores every decodable image.

Sharding. `shard=(k, n)` keeps the k-th of every n files of the sorted list, so n processes
cover the folder exactly once. Combine their CSVs by keeping one header:

    head -n 1 preds-1.csv > preds.csv && tail -q -n +2 preds-*.csv >> preds.csv

A PACS. `root` may be a DICOMweb root (`https://host/dicom-web`): QIDO-RS lists the
radiograph instances, WADO-RS fetches them into the decoding workers, and each is a row keyed
`studies/<Study>/series/<Series>/instances/<SOP>` (`dicomweb`). `pacs=PacsOptions(send=...)`
sends every SEG and SR the run writes to DICOMweb (STOW-RS) or DICOM (C-STORE) targets, once
per target across resumed runs (`senders`); `ScoreSummary.sent` says what each got.

Outputs. With `masks_dir`, each positive gets `<masks_dir>/<path>.mask.png` (0/255 at the
source's Rows×Columns) and `<path>.overlay.png` (the image with the mask outlined); with
`seg_dir`, each positive DICOM gets `<seg_dir>/<SOPInstanceUID>.dcm`, a BINARY DICOM
Segmentation referencing its source. PNG/JPEG inputs get PNGs but no SEG (counted in the
summary). Both need an artifact exported with its mask output (`--return-mask`). With
`sr_dir`, every scored DICOM gets `<sr_dir>/<SOPInstanceUID>.dcm`, a DICOM SR (TID 1500) with
the finding, the probability and the model, referencing the SEG of a positive when `seg_dir`
is given too; any artifact will do. They are written by processes while scoring goes on
(`output_workers`, default one per core up to 8; 0: two threads of the scoring process),
and a batch's rows reach the CSV once its files exist. Names come from
`writer.safe_output_path`: an invalid UID or an input path that is not plain names gives a
hash-named file (counted in `names_replaced`), never a path outside.

Durability and one writer. Rows are written batch by batch with one write, flushed and
fsync'd, after the outputs of that batch, so the CSV is the record of what is done; `--resume`
continues it after any number of interruptions, and the CSV is locked for one run at a time.
A destination that cannot be written stops the run with `ledger.WriteFailed`: rows fsync'd
before stay, and a batch whose outputs failed that way has no rows, so `--resume` writes rows
and outputs again. SIGTERM or Ctrl-C (in `ptxfast score`) stops between batches with the
ledger whole (`signals`); helper processes die with the scorer.

The modules:

- config.py     `ScoreConfig` (the request, one typed field per option), its checks, ScoreError
- inputs.py     finding and sniffing the inputs, shards, what is left to score
- folders.py    regular files only (a FIFO is a row, never opened); marked output folders
- ledger.py     the durable CSV: lock, fsync'd appends, resume, torn-line handling; cells
                through `ptxfast.safe_text` (escaped, formula-guarded, read back exactly)
- signals.py    SIGTERM / Ctrl-C stop the run between batches (`Stopped`)
- processes.py  how helper processes start, and die with the scorer
- library_messages.py  pydicom/highdicom warnings about headers counted, never printed
- decode.py     the Dataset, batches, and the loader that survives crashed workers
- pipeline.py   one batch's model pass, lanes, the window of batches in flight, the ordered
                committer, how many lanes and workers
- writer.py     rows and output files (PNG masks, overlays, safe names); dicom_out.py: SEG, SR
- stats.py      what an engine returns: `Setup`, `LoopStats` (and the writer's `OutputStats`)
- summary.py    `ScoreSummary`, built once by `build` from those and the counts read back from
                the ledger; the printed table
- speed.py      steady rate, model-only timing, the shared-core bound
- run.py        `score_folder`: checks, model, ledger, engine, JSON
- pacs.py       `PacsOptions` (a DICOMweb source, --send targets), credentials, retries;
  dicomweb.py   QIDO-RS listing, WADO-RS fetching in the decoding workers, the spool;
  senders.py    STOW-RS and C-STORE of the SEG and SR files, once (`<out>.sent`)
- engine_local.py, engine_ray.py   the two engines (this machine; a Ray cluster), and
  ray_stages.py  the Ray engine's decoder and model actors
"""

import importlib
from typing import TYPE_CHECKING

# Imported when first used: the output-writing processes import ptxfast.score.writer, and
# that must not load torch (which pipeline and run need) in each of them.
_FROM = {
    "ScoreConfig": "config", "ScoreError": "config", "Inputs": "inputs", "find_inputs": "inputs",
    "parse_shard": "inputs", "CSV_COLUMNS": "ledger", "read_done": "ledger",
    "default_workers": "pipeline", "score_folder": "run", "ScoreSummary": "summary",
    "print_summary": "summary",
}  # fmt: skip
__all__ = [
    "CSV_COLUMNS", "Inputs", "ScoreConfig", "ScoreError", "ScoreSummary", "default_workers",
    "find_inputs", "parse_shard", "print_summary", "read_done", "score_folder",
]  # fmt: skip

if TYPE_CHECKING:
    from ptxfast.score.config import ScoreConfig, ScoreError
    from ptxfast.score.inputs import Inputs, find_inputs, parse_shard
    from ptxfast.score.ledger import CSV_COLUMNS, read_done
    from ptxfast.score.pipeline import default_workers
    from ptxfast.score.run import score_folder
    from ptxfast.score.summary import ScoreSummary, print_summary


def __getattr__(name: str):
    if name in _FROM:
        return getattr(importlib.import_module(f"ptxfast.score.{_FROM[name]}"), name)
    raise AttributeError(f"module 'ptxfast.score' has no attribute {name!r}")
