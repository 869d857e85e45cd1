"""Export artifacts on disk: one model file plus a JSON sidecar, written atomically, verified on load.

`exports/<name>.<backend>-<precision>.<ext>` holds the model (`.ts` TorchScript, `.ep` exported
program, `.onnx` for ONNX Runtime as `<name>.onnx-fp32.onnx` and OpenVINO as
`<name>.openvino-<precision>.onnx`) and `exports/<name>.<backend>-<precision>.json` says what it is: input size and dtype,
thresholds, backend, precision, versions, the sha256 of the model file and of the checkpoints it
came from, and the parity figures measured at export. The model file is written first and the
sidecar last, each through a temporary file and `os.replace` (`ptxfast.files.atomic_write`), so
a sidecar never names a file that is not complete; every loader checks the model file against
the sidecar's sha256 first.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ptxfast.checkpoint import sha256_file
from ptxfast.files import write_json

FORMAT_VERSION = 1
SIDECAR_SUFFIX = ".json"
EXTENSIONS = {"torchscript": "ts", "exported_program": "ep", "onnx": "onnx"}
# The backend part of a file name where it is not the backend's own name: the ONNX Runtime
# artifact is the portable one, `<name>.onnx-fp32.onnx`.
FILE_TAGS = {"onnxruntime": "onnx"}

# Every sidecar carries these keys (tests and loaders rely on them).
SIDECAR_FIELDS = (
    "format_version",
    "name",
    "kind",
    "file",
    "input",
    "batch",
    "thresholds",
    "backend",
    "path",
    "precision",
    "return_mask",
    "outputs",
    "device",
    "versions",
    "created",
    "sha256",
    "sources",
    "recipe",
    "parity",
)


class ArtifactError(ValueError):
    """An artifact that cannot be used; the message says which file and what to do."""


class Sidecar(dict):
    """A sidecar's fields (a plain dict) plus where it was read from."""

    def __init__(self, fields: dict[str, Any], path: Path) -> None:
        super().__init__(fields)
        self.path = Path(path)

    @property
    def model_path(self) -> Path:
        """The model file the sidecar describes (its `file`, beside the sidecar)."""
        return self.path.parent / self["file"]

    @property
    def export_command(self) -> str:
        """The command that remakes this artifact (for error messages)."""
        flag = "--cascade" if self.get("kind") == "cascade" else "--model"
        return (
            f"ptxfast export {flag} {self.get('name', '?')} --backend {self.get('backend', '?')} "
            f"--precision {self.get('precision', {}).get('requested', '?')}"
        )


def file_stem(name: str, backend: str, precision: str) -> str:
    """`eb3un+eb3.torchscript-fp32`, `eb3un+eb3.onnx-fp32`: an artifact's file name without its
    extension."""
    return f"{name}.{FILE_TAGS.get(backend, backend)}-{precision}"


def write_artifact(model_tmp: str | Path, model_path: str | Path, sidecar: dict[str, Any]) -> Path:
    """Move the finished model file `model_tmp` to `model_path` and write its sidecar beside it.

    Fills `file`, `sha256`, `format_version` (and `created` when absent) in the sidecar, moves the
    model into place with `os.replace`, then writes the sidecar atomically. Returns
    the sidecar's path. `model_tmp` must be in the same folder (a rename, not a copy).
    """
    model_tmp, model_path = Path(model_tmp), Path(model_path)
    if model_tmp.parent.resolve() != model_path.parent.resolve():
        raise ValueError(f"{model_tmp} must be in {model_path.parent} to be moved atomically")
    fields = dict(sidecar)
    fields["format_version"] = FORMAT_VERSION
    fields["file"] = model_path.name
    fields["sha256"] = sha256_file(model_tmp)
    fields.setdefault("created", utc_now())
    missing = [k for k in SIDECAR_FIELDS if k not in fields]
    if missing:
        raise ValueError(f"sidecar for {model_path.name} lacks {', '.join(missing)}")
    os.replace(model_tmp, model_path)  # the model file is complete: moving it is the write
    return write_json(model_path.with_suffix(SIDECAR_SUFFIX), fields)


def utc_now() -> str:
    """Now as an ISO 8601 UTC timestamp with microseconds (sidecars sort by it)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def sidecar_path(path: str | Path) -> Path:
    """The sidecar of an artifact given either its model file or the sidecar itself."""
    path = Path(path)
    return path if path.suffix == SIDECAR_SUFFIX else path.with_suffix(SIDECAR_SUFFIX)


def read_sidecar(path: str | Path) -> Sidecar:
    """Read an artifact's sidecar; `path` may be the model file or the `.json` beside it."""
    if not str(path).strip() or Path(path).is_dir():  # "" (an unset variable) reads as "."
        raise ArtifactError(
            f"{str(path)!r} is not an artifact: give the exported model file or its .json "
            "sidecar (exports/<name>.<backend>-<precision>.json)"
        )
    side = sidecar_path(path)
    if not side.is_file():
        raise ArtifactError(
            f"no sidecar {side} for artifact {path}; export it with `ptxfast export ...`"
        )
    try:
        fields = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"sidecar {side} is not readable JSON ({err}); re-export it") from None
    if not isinstance(fields, dict):
        raise ArtifactError(f"sidecar {side} is not a JSON object; re-export it")
    version = fields.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"sidecar {side} has format version {version!r}, this ptxfast reads "
            f"{FORMAT_VERSION}; re-export it with this version"
        )
    missing = [k for k in SIDECAR_FIELDS if k not in fields]
    if missing:
        raise ArtifactError(f"sidecar {side} lacks {', '.join(missing)}; re-export it")
    return Sidecar(fields, side)


def verify(sidecar: Sidecar | str | Path) -> Path:
    """The model file of `sidecar` after checking its bytes against the recorded sha256.

    A missing or modified file is refused, so a loader never runs bytes the export did not
    write and gate.
    """
    if not isinstance(sidecar, Sidecar):
        sidecar = read_sidecar(sidecar)
    model = sidecar.model_path
    if not model.is_file():
        raise ArtifactError(
            f"artifact {model} named by {sidecar.path} is missing; re-export it with "
            f"`{sidecar.export_command}`"
        )
    actual = sha256_file(model)
    if actual != sidecar["sha256"]:
        raise ArtifactError(
            f"artifact {model} does not match its recorded sha256 ({actual[:12]}… on disk, "
            f"{str(sidecar['sha256'])[:12]}… recorded); re-export it with "
            f"`{sidecar.export_command}`"
        )
    return model


def list_artifacts(exports_dir: str | Path, name: str | None = None) -> list[Sidecar]:
    """Readable sidecars in `exports_dir` (optionally of one model), oldest first by `created`."""
    found = []
    for side in sorted(Path(exports_dir).glob(f"*{SIDECAR_SUFFIX}")):
        try:
            sc = read_sidecar(side)
        except ArtifactError:
            continue  # not a ptxfast sidecar (or an older format): not a candidate
        if name is None or sc.get("name") == name:
            found.append(sc)
    return sorted(found, key=lambda sc: str(sc.get("created", "")))


def latest_artifact(exports_dir: str | Path = "exports", name: str | None = None) -> Path:
    """The sidecar of the newest artifact in `exports_dir` (by its `created` time).

    `name` restricts the choice to one model. None found is an `ArtifactError` saying how to
    make one.
    """
    found = list_artifacts(exports_dir, name)
    if not found:
        what = f"no {name} artifact" if name else "no artifact"
        raise ArtifactError(
            f"{what} in {exports_dir}; make one with `ptxfast export --cascade eb3un+eb3 "
            f"--out {exports_dir}` (or --model NAME)"
        )
    return found[-1].path
