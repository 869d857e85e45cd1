"""The export run: checkpoint → reference → candidates through the gate → artifact + sidecar.

`export_model` wires the parts of this package: the plan, the parity data and the eager fp32
reference, each candidate built and gated (and timed when there are several), and the chosen
one moved into place with its sidecar (`ptxfast.inference.artifact.write_artifact`). Anything that fails
leaves no file behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ptxfast.checkpoint import load_checkpoint, sha256_file
from ptxfast.environment import versions
from ptxfast.errors import PtxfastError, first_line
from ptxfast.export.candidates import (
    SELECTION_CALLS,
    Build,
    Candidate,
    artifact_stem,
    build_candidate,
    candidate_request,
    choose_default,
    selection_row,
    time_predictors,
)
from ptxfast.export.config import ExportConfig, ExportError, ExportResult, ParityError
from ptxfast.export.data import gate_data
from ptxfast.export.gate import collect_outputs, compare_outputs, gate
from ptxfast.export.plan import Plan, plan
from ptxfast.inference.artifact import ArtifactSpec, read_sidecar, utc_now, write_artifact
from ptxfast.inference.backends import BACKENDS, write_onnx
from ptxfast.inference.fused import fuse
from ptxfast.inference.operating import OperatingPointError, describe, label_rule
from ptxfast.inference.operating import resolve as resolve_operating_point
from ptxfast.inference.predictor import Predictor
from ptxfast.models import build, cascade_parts, kind_of, thresholds


def _checkpoint_path(cfg: ExportConfig) -> Path:
    path = Path(cfg.checkpoint) if cfg.checkpoint else Path(cfg.runs) / cfg.name / "best.pt"
    if not path.is_file():
        raise ExportError(
            f"no checkpoint {path} for {cfg.name}; train it with `ptxfast train --arch "
            f"{cfg.name}`, or pass --runs DIR / --checkpoint PATH"
        )
    return path


def _load_model(path: Path, name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The fp32 eval model of a checkpoint, read with weights_only (pickled code is refused)."""
    state = load_checkpoint(path)
    saved = state["model_args"].get("name")
    if saved != name:
        raise ExportError(f"{path} holds {saved!r}, not {name!r}; pass the {name} checkpoint")
    model = build(name, weights=None)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ExportError(
            f"{path}: weights do not fit {name} ({first_line(err)}); retrain it"
        ) from None
    return model.eval(), state


def _sources(path: Path, state: dict[str, Any], name: str, runs: Path) -> dict[str, Any]:
    """The checkpoints the artifact came from, by sha256 (a cascade's segmenter too)."""
    out: dict[str, Any] = {"checkpoint": {"path": str(path), "sha256": sha256_file(path)}}
    if kind_of(name) == "cascade":
        recipe = state.get("recipe") or {}
        seg_path = Path(recipe.get("segmenter_path") or runs / cascade_parts(name)[0] / "best.pt")
        recorded = recipe.get("segmenter_sha256")
        current = sha256_file(seg_path) if seg_path.is_file() else None
        out["segmenter_checkpoint"] = {
            "path": str(seg_path),
            # What the cascade was trained on; the cascade checkpoint carries those weights.
            "sha256": recorded or current,
            "sha256_on_disk": current,
            "matches_training": None if not (recorded and current) else recorded == current,
        }
    return out


_RECIPE_KEYS = (
    "arch", "data", "size", "epochs", "batch_size", "lr", "weights", "freezing",
    "freezing_applied", "rotate_every", "select", "seed", "amp",
)  # fmt: skip


def _recipe_summary(state: dict[str, Any]) -> dict[str, Any]:
    recipe = state.get("recipe") or {}
    out = {k: recipe[k] for k in _RECIPE_KEYS if k in recipe}
    out.update(
        epoch=state.get("epoch"),
        metric=state.get("metric"),
        best_epoch=state.get("best_epoch"),
        checkpoint_version=state.get("version"),
    )
    return {k: v for k, v in out.items() if v is not None}


def _outputs(kind: str, size: int, return_mask: bool) -> list[dict[str, Any]]:
    out = [
        {"name": "prob", "dtype": "float32", "shape": ["N"]},
        {
            "name": "area",
            "dtype": "int32",
            "shape": ["N"],
            "note": "pixels above the pixel threshold" if kind != "classifier" else "-1: no mask",
        },
    ]
    if return_mask:
        out.append({"name": "mask", "dtype": "float32", "shape": ["N", 1, size, size]})
    return out


def _probability(operating: dict[str, Any] | None) -> dict[str, Any]:
    """Which probability the graph returns and which one a predictor reports."""
    temp = (operating or {}).get("temperature")
    out: dict[str, Any] = {"graph": "raw", "reported": "calibrated" if temp else "raw"}
    if temp:
        out["calibrated"] = {
            "temperature": temp,
            "formula": "sigmoid(logit(p) / temperature) of the graph's raw p",
            # Outside the graph, so every backend returns the same outputs; exact in float64.
            "computed_by": "the predictor (ptxfast.inference.operating.LabelRule)",
        }
    return out


def _validation_figures(
    reference: Predictor, ref: dict[str, Any], source: dict[str, Any], n_boot: int
) -> dict[str, Any]:
    """Sensitivity and specificity (with 95% bootstrap CIs) at the operating point on the
    export's labelled data (the validation split, or phantoms when there is none), from the
    eager fp32 outputs the parity gate already collected."""
    from ptxfast.metrics import bootstrap_ci

    reported = reference.reported(torch.from_numpy(ref["prob"])).numpy()
    ci = bootstrap_ci(ref["labels"], reported, reference.rule.threshold, n_boot=n_boot)
    split = "val" if source["source"] == "validation split" else source["source"]
    return {
        "split": split,
        "data": source.get("data"),
        "n": int(len(ref["labels"])),
        "n_pos": int(ref["labels"].sum()),
        "recall": ci["recall"],
        "specificity": ci["specificity"],
    }


def export_model(cfg: ExportConfig, say: Callable[[str], None] = lambda _: None) -> ExportResult:
    """Export one model per `cfg`; returns where the artifact and its sidecar are.

    With several candidates (a CPU export without --backend) each is built, gated and timed,
    and the fastest that passes is written. Raises ExportError (ParityError when the one
    candidate's gate fails) with nothing written to `cfg.out`.
    """
    start = time.perf_counter()
    p = plan(cfg)
    for note in p.notes:
        say(note)
    ckpt = _checkpoint_path(cfg)
    model, state = _load_model(ckpt, cfg.name)
    size = cfg.size or int(state["model_args"].get("size") or 0)
    if not size:
        raise ExportError(f"{ckpt} records no training size; pass --size")
    operating = _operating_point(cfg, ckpt, p.kind)
    p.rule = label_rule({"operating_point": operating, "thresholds": thresholds(p.kind, size)})
    reference = _reference(model, p, size)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    built: list[Candidate] = []
    job = Build(model, p, size, out)
    try:
        batches, source = gate_data(cfg, state, size, p.batch[1])
        batches = list(batches)
        say(
            f"{p.name}: parity against eager fp32 on {source['source']} ({source['n_planned']} images)"
        )
        ref = collect_outputs(reference, batches)
        if operating is not None:
            operating["val"] = _validation_figures(reference, ref, source, cfg.n_boot)
            say(f"{p.name}: labels {describe({'operating_point': operating})}")
        _build_and_gate(job, (batches, ref), built, say)
        chosen, selection = _choose(p, built, size, source, say)
        sidecar = _sidecar(p, chosen, size, ckpt, state, cfg, source, operating)
        if selection is not None:
            sidecar["selection"] = selection
        final = out / f"{artifact_stem(p, chosen.backend, chosen.precision)}.{chosen.ext}"
        side = write_artifact(chosen.tmp, final, sidecar)
        spec = read_sidecar(side)  # as every reader will see it
        triton = _triton(cfg, job, chosen, spec, say)
    finally:
        for c in built:
            c.tmp.unlink(missing_ok=True)
        if "path" in job.onnx_file:
            job.onnx_file["path"].unlink(missing_ok=True)
    return ExportResult(
        sidecar_path=side,
        model_path=final,
        sidecar=spec,
        notes=p.notes,
        seconds=time.perf_counter() - start,
        triton=triton,
    )


def _triton(
    cfg: ExportConfig, job: Build, chosen: Candidate, spec: ArtifactSpec, say: Callable[[str], None]
) -> list[Path]:
    """With --triton, the model repository of the written artifact (`ptxfast.export.triton`):
    its ONNX file, or, beside a TorchScript / TensorRT artifact, the same fused graph exported
    to ONNX here (checked against eager by `to_onnx`), plus the TensorRT engine as a plan where
    the artifact's backend builds one."""
    if cfg.triton is None:
        return []
    from ptxfast.export import triton

    p, runtime = job.plan, BACKENDS[chosen.backend]
    onnx_file, plan_file = job.onnx_file.get("path"), None
    made = []
    try:
        if runtime.onnx:
            onnx_file = spec.model_path
        elif onnx_file is None:
            say(f"{p.name}: exporting the fused graph to ONNX for Triton")
            onnx_file = job.out / f".{p.name}.triton.{os.getpid()}.tmp"
            made.append(onnx_file)
            write_onnx(job.model, candidate_request(job, chosen.precision), onnx_file)
        if runtime.triton_plan is not None:
            plan_file = job.out / f".{p.name}.plan.{os.getpid()}.tmp"
            made.append(plan_file)
            runtime.triton_plan(job.model, candidate_request(job, chosen.precision), plan_file)
        return triton.write_repository(spec, cfg.triton, onnx_file, plan_file)
    except PtxfastError as err:
        raise ExportError(f"{spec.path} is written, the Triton repository is not: {err}") from None
    finally:
        for f in made:
            f.unlink(missing_ok=True)


def _operating_point(cfg: ExportConfig, ckpt: Path, kind: str) -> dict[str, Any] | None:
    """The sidecar's `operating_point` for --operating-point (None without one)."""
    if not cfg.operating_point:
        return None
    try:
        return resolve_operating_point(cfg.operating_point, ckpt, kind)
    except OperatingPointError as err:
        raise ExportError(str(err)) from None


def _reference(model: torch.nn.Module, p: Plan, size: int) -> Predictor:
    """The eager fp32 predictor every candidate is gated against (with masks, for Dice)."""
    masks = p.kind != "classifier"
    return Predictor(
        fuse(model, p.name, size, device=p.device, return_mask=masks, tta=p.tta),
        name=p.name, size=size, backend="eager", precision="fp32", device=p.device,
        path="eager", return_mask=masks, rule=p.rule,
    )  # fmt: skip


def _build_and_gate(
    job: Build,
    data: tuple[list, dict[str, Any]],
    built: list[Candidate],
    say: Callable[[str], None],
) -> None:
    """Build each planned candidate into `built` (so the caller removes its file whatever
    happens) and gate it on `data` (the batches and the reference's outputs on them). In a
    choice between several, one that cannot be built is left out with a line."""
    batches, ref = data
    p, size = job.plan, job.size
    for backend, precision in p.candidates:
        verb = BACKENDS[backend].verb
        say(f"{p.name}: {verb} {backend} {precision} at {size}² on {p.device}")
        try:
            c = build_candidate(backend, precision, job)
        except PtxfastError as err:  # a missing runtime, an exporter that failed, ...
            if len(p.candidates) == 1:
                raise
            say(f"{p.name}: {backend} {precision} left out ({err})")
            continue
        built.append(c)
        outputs = collect_outputs(c.predictor, batches)
        c.figures = compare_outputs(outputs, ref, c.predictor.thresholds["label"])
        c.failed = gate(c.figures, p.tolerances[precision])


def _choose(
    p: Plan, built: list[Candidate], size: int, source: dict[str, Any], say: Callable[[str], None]
) -> tuple[Candidate, dict[str, Any] | None]:
    """(the candidate to write, the sidecar's `selection` or None): the one planned candidate
    when it passed its gate (a ParityError with the figures when not), else the fastest of
    several that passed."""
    if len(p.candidates) == 1:
        c = built[0]
        if c.failed:
            raise ParityError(
                f"parity gate failed for {p.name} ({c.backend} {c.precision}): "
                f"{'; '.join(c.failed)} (n={c.figures['n']}); no artifact written. Export at a "
                "wider precision, or loosen the tolerance (--min-agreement, --max-df1, "
                "--max-dprob) if you accept the difference",
                {**source, **c.figures, "tolerance": asdict(p.tolerances[c.precision])},
            )
        return c, None
    say(f"{p.name}: timing {len(built)} candidates at batch {p.batch[1]}")
    speeds = time_predictors([c.predictor for c in built], p.batch[1], size)
    for c, ips in zip(built, speeds, strict=True):
        c.images_per_s = ips
    chosen = choose_default(built)
    selection = {
        "how": f"fastest that passes its gate; median of {SELECTION_CALLS} interleaved "
        f"calls at batch {p.batch[1]}, {torch.get_num_threads()} threads",
        "candidates": [selection_row(c, chosen) for c in built],
    }
    return chosen, selection


def _sidecar(
    p: Plan,
    c: Candidate,
    size: int,
    ckpt: Path,
    state: dict[str, Any],
    cfg: ExportConfig,
    source: dict[str, Any],
    operating: dict[str, Any] | None = None,
) -> dict[str, Any]:
    fields = dict(c.fields)
    sidecar = {
        "name": p.name,
        "kind": p.kind,
        "input": {
            "shape": ["N", 1, size, size],
            "size": size,
            "dtype": fields.pop("input_dtype"),
            "range": [0.0, 1.0],
            "channels_last": fields.pop("channels_last"),
        },
        "batch": dict(zip(("min", "opt", "max"), p.batch, strict=True)),
        # label: the cut on the raw probability, the operating point's when there is one.
        "thresholds": {**thresholds(p.kind, size), "label": p.rule.raw_threshold},
        "backend": c.backend,
        "path": fields.pop("path"),
        "precision": fields.pop("precision"),
        "return_mask": p.return_mask,
        "tta": p.tta,
        "operating_point": operating,
        "probability": _probability(operating),
        "outputs": _outputs(p.kind, size, p.return_mask),
        "device": c.predictor.device.type,
        "versions": versions(p.device),
        "created": utc_now(),
        "sources": _sources(ckpt, state, p.name, Path(cfg.runs)),
        "recipe": _recipe_summary(state),
        "parity": {
            **source,
            **c.figures,
            "tolerance": asdict(p.tolerances[c.precision]),
            "passed": True,
        },
    }
    sidecar.update(fields)  # onnx, runtime
    return sidecar
