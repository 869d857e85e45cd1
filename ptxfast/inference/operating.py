"""Operating points of exported artifacts: which threshold labels an image, and why.

`ptxfast export --operating-point` takes one of

- `recall=0.95`: the threshold `ptxfast evaluate --target-recall 0.95` chose on the validation
  split (read from the checkpoint's evaluation.json, `checkpoint.read_evaluation`);
- `threshold=0.37`: a threshold the user gives;
- `calibrated`: the probability reported is the temperature-scaled one (the temperature from
  evaluation.json), labelled positive above 0.5.

The artifact's sidecar carries the result as `operating_point` (`resolve` builds it, the export
adds the validation figures at it), and `label_rule` reads it back: the threshold on the
probability the graph returns, and the temperature when the reported probability is calibrated.
Sidecars without one (older artifacts) keep their recorded `thresholds.label`. The Predictor
labels through `LabelRule`, so every engine, the benchmark and the parity gate apply one rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptxfast.checkpoint import evaluation_path, read_evaluation
from ptxfast.errors import PtxfastError

CALIBRATED_THRESHOLD = 0.5  # a calibrated probability's natural cut: more likely than not

__all__ = [
    "CALIBRATED_THRESHOLD",
    "LabelRule",
    "OperatingPointError",
    "describe",
    "label_rule",
    "parse",
    "resolve",
]


class OperatingPointError(PtxfastError):
    """An operating point that cannot be set as asked; the message says what to do."""


@dataclass(frozen=True)
class LabelRule:
    """How a predictor turns the graph's raw probability into what it reports.

    reported = sigmoid(logit(p) / temperature) when calibrated, else p; label = reported >
    threshold. `raw_threshold` is the same cut on the raw probability (temperature scaling keeps
    the order), which is what the parity gate and label comparisons use.
    """

    threshold: float
    temperature: float | None = None

    def reported(self, prob: torch.Tensor) -> torch.Tensor:
        """The probability to report (float32): raw, or temperature-scaled."""
        if self.temperature is None:
            return prob.float()
        p = prob.double().clamp(0.0, 1.0)
        return torch.sigmoid(torch.logit(p) / self.temperature).float()

    def label(self, prob: torch.Tensor) -> torch.Tensor:
        """The image label (bool) of raw probabilities."""
        return self.reported(prob) > self.threshold

    @property
    def raw_threshold(self) -> float:
        if self.temperature is None:
            return self.threshold
        t = self.threshold
        return 1.0 / (1.0 + math.exp(-self.temperature * math.log(t / (1.0 - t))))


def parse(text: str) -> dict[str, Any]:
    """`recall=0.95` | `threshold=0.37` | `calibrated` → {"method", "value"}."""
    spec = text.strip().lower().replace(" ", "")
    if spec == "calibrated":
        return {"method": "calibrated", "value": None}
    key, _, value = spec.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if key == "recall" and 0 < number <= 1:
        return {"method": "target_recall", "value": number}
    if key == "threshold" and 0 <= number < 1:
        return {"method": "threshold", "value": number}
    raise OperatingPointError(
        f"--operating-point {text!r}: use recall=R (0 < R <= 1, chosen on validation by "
        "`ptxfast evaluate`), threshold=T (0 <= T < 1) or calibrated"
    )


def _evaluation(checkpoint: Path, what: str) -> dict[str, Any]:
    doc = read_evaluation(checkpoint)
    if doc is None:
        stale = evaluation_path(checkpoint).is_file()
        raise OperatingPointError(
            f"{what} needs the evaluation results of {checkpoint}"
            + (" (its evaluation.json belongs to other weights)" if stale else "")
            + f"; run `ptxfast evaluate --runs {checkpoint.parent.parent}` first"
        )
    return doc


def resolve(text: str, checkpoint: str | Path, kind: str) -> dict[str, Any]:
    """The sidecar's `operating_point` for `--operating-point text` on `checkpoint`, without
    the validation figures (the export measures those): threshold, what it applies to, how it
    was chosen, the temperature."""
    spec = parse(text)
    checkpoint = Path(checkpoint)
    score = "k-th largest pixel probability" if kind == "segmenter" else "image probability"
    out: dict[str, Any] = {"method": spec["method"], "score": score, "temperature": None}
    if spec["method"] == "threshold":
        return {**out, "threshold": spec["value"], "chosen": f"given: threshold={spec['value']:g}"}
    doc = _evaluation(checkpoint, f"--operating-point {text}")
    source = {"evaluation": str(evaluation_path(checkpoint)), "checkpoint_sha256": doc["sha256"]}
    if spec["method"] == "calibrated":
        cal = doc.get("calibration")
        if not cal:
            raise OperatingPointError(
                f"{checkpoint} has no calibration temperature ({'; '.join(doc.get('notes', []))}); "
                "use --operating-point recall=R or threshold=T"
            )
        return {
            **out,
            "threshold": CALIBRATED_THRESHOLD,
            "temperature": float(cal["temperature"]),
            "chosen": f"calibrated: temperature {cal['temperature']:.3g} fitted on val, "
            f"positive above {CALIBRATED_THRESHOLD:g}",
            "split": "val",
            "source": source,
        }
    target = spec["value"]
    found = [
        op for op in doc.get("operating_points", []) if math.isclose(op["target_recall"], target)
    ]
    if not found:
        have = ", ".join(f"{op['target_recall']:g}" for op in doc.get("operating_points", []))
        raise OperatingPointError(
            f"no operating point for recall {target:g} in {evaluation_path(checkpoint)} "
            f"(it has {have or 'none'}); run `ptxfast evaluate --runs "
            f"{checkpoint.parent.parent} --target-recall {target:g}`"
        )
    op = found[0]
    return {
        **out,
        "threshold": float(op["threshold"]),
        "target_recall": target,
        "reached": bool(op["reached"]),
        "chosen": f"recall >= {target:g} on val",
        "note": op.get("note", ""),
        "split": "val",
        "source": source,
    }


def label_rule(sidecar: Mapping[str, Any]) -> LabelRule:
    """The label rule an artifact's sidecar records: its operating point, else (artifacts made
    before operating points) its `thresholds.label`."""
    op = sidecar.get("operating_point")
    if op:
        temp = op.get("temperature")
        return LabelRule(float(op["threshold"]), float(temp) if temp else None)
    return LabelRule(float(sidecar["thresholds"]["label"]))


def describe(sidecar: Mapping[str, Any]) -> str:
    """One line naming the operating point: "p > 0.213 (recall >= 0.95 on val: sensitivity
    0.96 [0.90, 1.00], specificity 0.81 [0.74, 0.87])"."""
    op = sidecar.get("operating_point")
    if not op:
        return f"p > {float(sidecar['thresholds']['label']):g} (the model's default rule)"
    what = "calibrated p" if op.get("temperature") else "p"
    text = f"{what} > {op['threshold']:.3g} ({op['chosen']}"
    val = op.get("val")
    if val:
        parts = []
        for key, name in (("recall", "sensitivity"), ("specificity", "specificity")):
            c = val[key]
            parts.append(f"{name} {c['value']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]")
        text += f"; on {val.get('split', 'val')}: " + ", ".join(parts)
    return text + ")"
