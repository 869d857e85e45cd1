"""What an engine is handed: the checked request (`Job`) and how it loads the artifact (`load`).

Both live apart from `score.run`, which wires the engines, so the engines (and the Ray model
actors) import them without importing the module that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptxfast.score import ledger
from ptxfast.score.config import ScoreConfig, ScoreError

__all__ = ["Job", "load"]


@dataclass
class Job:
    """A checked request and what `score_folder` prepared for the engine."""

    config: ScoreConfig
    preds: ledger.PredsCsv  # open, locked, its rows read on --resume
    predictor: Any  # runtime.Predictor (local engine); None on Ray, whose actors load it
    source: Any  # the artifact's ArtifactSpec, or the Predictor passed in
    t_start: float  # when score_folder was called


def load(sidecar, device: str):
    """The artifact's predictor on `device`; its refusals as ScoreError."""
    from ptxfast.inference import runtime

    try:
        # "auto": the device type the artifact was exported for when it is here, else the CPU.
        return runtime.load_predictor(sidecar, device=device)
    except ValueError as err:  # PredictorError, ArtifactError (bytes not the sidecar's)
        raise ScoreError(str(err)) from None
