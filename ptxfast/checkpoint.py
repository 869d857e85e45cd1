"""Training checkpoints: written atomically, read with `weights_only=True`, rebuild their model alone.

A checkpoint is a plain dict of tensors and Python containers:
{"model", "optimizer", "epoch", "metric", "model_args", "recipe", "version"} plus the state a resumed
run needs to continue exactly (GradScaler, RNG states, best-so-far, history, negative-rotation
position). Nothing in it is an arbitrary Python object, so loading runs no code.

What `ptxfast evaluate` learns about a checkpoint on validation data (the operating thresholds
chosen for target recalls, the calibration temperature) is not part of the weights: it goes to
`evaluation.json` beside `best.pt` (`write_evaluation`), naming the checkpoint by sha256, and
`read_evaluation` returns it only while that checkpoint is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ptxfast import __version__
from ptxfast.errors import PtxfastError, first_line
from ptxfast.files import atomic_write, read_json, write_json


class CheckpointError(PtxfastError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


EVALUATION_JSON = "evaluation.json"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path` atomically (a temporary file in the same folder, then os.replace),
    so a run killed mid-write leaves the previous checkpoint intact."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def evaluation_path(checkpoint: str | Path) -> Path:
    """Where the evaluation results of `checkpoint` live: evaluation.json beside it."""
    return Path(checkpoint).with_name(EVALUATION_JSON)


def write_evaluation(checkpoint: str | Path, results: dict[str, Any]) -> Path:
    """Write the evaluation results of `checkpoint` (JSON-safe dict: operating points,
    temperature) beside it, atomically, stamped with the checkpoint's name and sha256."""
    checkpoint = Path(checkpoint)
    doc = {"checkpoint": checkpoint.name, "sha256": sha256_file(checkpoint), **results}
    return write_json(evaluation_path(checkpoint), doc)


def read_evaluation(checkpoint: str | Path) -> dict[str, Any] | None:
    """The evaluation results written for `checkpoint`, or None when there are none or they
    belong to other weights (the checkpoint was retrained since: evaluate it again)."""
    path = evaluation_path(checkpoint)
    if not path.is_file():
        return None
    doc = read_json(path, CheckpointError, "rerun `ptxfast evaluate` to rewrite it")
    if not isinstance(doc, dict) or doc.get("sha256") != sha256_file(checkpoint):
        return None
    return doc


def link_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Make `dst` hold the same bytes as the just-written `src` (a hard link when the filesystem
    allows, else a copy), atomically: best.pt then costs no second write of a large file."""
    import shutil

    def link_or_copy(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    return atomic_write(dst, link_or_copy)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`: tensors and plain containers only, no code runs.

    A file holding other pickled objects is refused with a `CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = first_line(err)
        raise CheckpointError(
            f"{path} was refused: it holds Python objects, not only tensors and plain containers "
            f"({first}); load only checkpoints written by ptxfast"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({err}); retrain it") from None
    if not isinstance(state, dict) or "model" not in state or "model_args" not in state:
        raise CheckpointError(f"{path} is not a ptxfast checkpoint (no model / model_args)")
    return state


def model_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, checkpoint dict): the architecture rebuilt from `model_args` and the
    saved weights loaded; no ImageNet lookup, no network. A cascade's segmenter is in the state."""
    from ptxfast.models import build

    state = load_checkpoint(path, map_location)
    name = state["model_args"]["name"]
    model = build(name, weights=None)
    model.load_state_dict(state["model"])
    return model.eval(), state


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (how cascades and exports name the checkpoints they used)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors and plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(internal), "gauss": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def checkpoint_header(name: str, size: int) -> dict[str, Any]:
    """The `model_args` and `version` entries every ptxfast checkpoint carries."""
    return {"model_args": {"name": name, "size": size}, "version": __version__}
