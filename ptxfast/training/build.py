"""The model a recipe trains: built by name, frozen by the recipe's policy (a cascade over its
trained segmenter's checkpoint), and `write_untrained` for checks where plumbing is the point."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptxfast.checkpoint import checkpoint_header, load_checkpoint, save_checkpoint, sha256_file
from ptxfast.models import apply_freezing, build, cascade_parts, imagenet_weights, kind_of
from ptxfast.recipes import TrainConfig, TrainError

__all__ = ["build_for_training", "write_untrained"]


def build_for_training(cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The model of `cfg`, frozen per `cfg.freezing` (BatchNorm momentum per
    `cfg.bn_momentum`), and what it was built from (a cascade's segmenter checkpoint path,
    sha256 and size; the freezing applied)."""
    weights = None if cfg.weights == "none" else cfg.weights
    info: dict[str, Any] = {}
    if kind_of(cfg.arch) != "cascade":
        model = build(cfg.arch, weights=weights)
    else:
        seg = cascade_parts(cfg.arch)[0]
        path = Path(cfg.segmenter) if cfg.segmenter else Path(cfg.runs) / seg / "best.pt"
        if not path.is_file():
            raise TrainError(
                f"{cfg.arch} needs its trained segmenter at {path}; run "
                f"`ptxfast train --arch {seg}` first (same --runs and --data)"
            )
        seg_state = load_checkpoint(path)
        if seg_state["model_args"].get("name") != seg:
            raise TrainError(
                f"{path} holds {seg_state['model_args'].get('name')!r}, not the {seg} "
                f"segmenter {cfg.arch} needs; retrain with `ptxfast train --arch {seg}`"
            )
        model = build(cfg.arch, weights=weights, segmenter_weights=seg_state["model"])
        info = {
            "segmenter_path": str(path),
            "segmenter_sha256": sha256_file(path),
            "segmenter_size": int(seg_state["model_args"].get("size", 0)),
        }
    pretrained = cfg.weights != "none" and (
        cfg.weights != "imagenet" or imagenet_weights(cfg.arch) is not None
    )
    freeze = cfg.freezing == "paper" or (cfg.freezing == "auto" and pretrained)
    if freeze:
        apply_freezing(model, cfg.arch)
    else:
        model.requires_grad_(True)
        if kind_of(cfg.arch) == "cascade":
            model.segmenter.requires_grad_(False)  # a cascade's segmenter is frozen by definition
    info["freezing_applied"] = "paper" if freeze else "none"
    if cfg.bn_momentum:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    return model, info


def write_untrained(
    runs: str | Path, name: str, size: int, *, seed: int = 0, note: str = ""
) -> Path:
    """RUNS/<name>/best.pt from a model never trained (weights drawn from `seed`, no ImageNet),
    in the format training writes, for checks where speed or plumbing is the point. A cascade is
    built over RUNS/<segmenter>/best.pt, written first when missing, and records that file's
    path and sha256 as a trained cascade does."""
    if kind_of(name) == "cascade":
        seg = cascade_parts(name)[0]
        if not (Path(runs) / seg / "best.pt").is_file():
            write_untrained(runs, seg, size, seed=seed, note=note)
    cfg = TrainConfig(arch=name, runs=str(runs), size=size, seed=seed, weights="none")
    torch.manual_seed(seed)
    model, info = build_for_training(cfg)
    state = {
        "model": model.state_dict(),
        "optimizer": {},
        "epoch": 0,
        "metric": 0.0,
        **checkpoint_header(name, size),
        "recipe": {**dataclasses.asdict(cfg), **info, **({"note": note} if note else {})},
    }
    return save_checkpoint(state, cfg.run_dir / "best.pt")
