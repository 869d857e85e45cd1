"""Export artifacts on disk: one model file plus a JSON sidecar, written atomically, verified on load.

`exports/<name>.<backend>-<precision>.<ext>` holds the model (`.ts` TorchScript, `.ep` exported
program, `.onnx` for ONNX Runtime as `<name>.onnx-fp32.onnx` and OpenVINO as
`<name>.openvino-<precision>.onnx`) and `exports/<name>.<backend>-<precision>.json` says what it is: input size and dtype,
thresholds, backend, precision, versions, the sha256 of the model file and of the checkpoints it
came from, and the parity figures measured at export. The model file is written first and the
sidecar last, each through a temporary file and `os.replace` (`ptxfast.files.atomic_write`), so
a sidecar never names a file that is not complete; every loader checks the model file against
the sidecar's sha256 first. What a sidecar holds is `ptxfast.inference.spec.ArtifactSpec`:
`write_artifact` checks a sidecar against it before anything is moved into place, and
`read_sidecar` returns one (validated) or raises one `ArtifactError` line naming the field.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ptxfast.checkpoint import sha256_file
from ptxfast.files import read_json, write_json
from ptxfast.inference.spec import FORMAT_VERSION, SIDECAR_FIELDS, ArtifactError, ArtifactSpec

SIDECAR_SUFFIX = ".json"

__all__ = [
    "FORMAT_VERSION",
    "SIDECAR_FIELDS",
    "ArtifactError",
    "ArtifactSpec",
    "file_stem",
    "latest_artifact",
    "list_artifacts",
    "read_sidecar",
    "sidecar_path",
    "verify",
    "write_artifact",
]


def file_stem(name: str, backend: str, precision: str) -> str:
    """`eb3un+eb3.torchscript-fp32`, `eb3un+eb3.onnx-fp32`: an artifact's file name without its
    extension."""
    from ptxfast.inference.backends import backend as registered

    return f"{name}.{registered(backend).tag}-{precision}"


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
    side = model_path.with_suffix(SIDECAR_SUFFIX)
    try:  # what every reader will check, checked before anything is moved into place
        ArtifactSpec.from_record(fields, side)
    except ArtifactError as err:
        raise ValueError(f"export wrote a sidecar its readers refuse: {err}") from None
    os.replace(model_tmp, model_path)  # the model file is complete: moving it is the write
    return write_json(side, fields)


def utc_now() -> str:
    """Now as an ISO 8601 UTC timestamp with microseconds (sidecars sort by it)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def sidecar_path(path: str | Path) -> Path:
    """The sidecar of an artifact given either its model file or the sidecar itself."""
    path = Path(path)
    return path if path.suffix == SIDECAR_SUFFIX else path.with_suffix(SIDECAR_SUFFIX)


def read_sidecar(path: str | Path) -> ArtifactSpec:
    """An artifact's validated sidecar; `path` may be the model file or the `.json` beside it.

    Anything a loader would trip over (unreadable JSON, another format version, a missing or
    mistyped field, an unknown backend) is one ArtifactError line naming the field and the fix."""
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
    return ArtifactSpec.from_record(read_json(side, ArtifactError, "re-export it", "sidecar"), side)


def verify(sidecar: ArtifactSpec | str | Path) -> Path:
    """The model file of `sidecar` after checking its bytes against the recorded sha256.

    A missing or modified file is refused, so a loader never runs bytes the export did not
    write and gate.
    """
    if not isinstance(sidecar, ArtifactSpec):
        sidecar = read_sidecar(sidecar)
    model = sidecar.model_path
    if not model.is_file():
        raise ArtifactError(
            f"artifact {model} named by {sidecar.path} is missing; re-export it with "
            f"`{sidecar.export_command}`"
        )
    actual = sha256_file(model)
    if actual != sidecar.sha256:
        raise ArtifactError(
            f"artifact {model} does not match its recorded sha256 ({actual[:12]}… on disk, "
            f"{sidecar.sha256[:12]}… recorded); re-export it with "
            f"`{sidecar.export_command}`"
        )
    return model


def list_artifacts(exports_dir: str | Path, name: str | None = None) -> list[ArtifactSpec]:
    """Readable sidecars in `exports_dir` (optionally of one model), oldest first by `created`.

    A sidecar that cannot be read is refused (an ArtifactError naming it) when it was written
    after the newest readable one: it is most likely the artifact the user means, damaged, and
    scoring with an older one instead would go unnoticed. Older unreadable ones (another format
    version, other JSON files) are not candidates. With `name`, only unreadable files named as
    its sidecars are (`<name>.<backend>-<precision>.json`): another model's cannot be the one."""
    found, damaged = [], []
    for side in sorted(Path(exports_dir).glob(f"*{SIDECAR_SUFFIX}")):
        try:
            sc = read_sidecar(side)
        except ArtifactError as err:
            if name is None or side.stem.startswith(f"{name}."):
                damaged.append((side, err))
            continue
        if name is None or sc.name == name:
            found.append(sc)
    found.sort(key=lambda sc: sc.created)
    newest = max((sc.path.stat().st_mtime for sc in found), default=float("-inf"))
    for side, err in damaged:
        if side.stat().st_mtime >= newest:
            raise ArtifactError(
                f"the newest sidecar in {exports_dir} cannot be read ({err}); pass --model "
                "with the artifact to use, or re-export it"
            ) from None
    return found


def latest_artifact(exports_dir: str | Path = "exports", name: str | None = None) -> Path:
    """The sidecar of the newest artifact in `exports_dir` (by its `created` time).

    `name` restricts the choice to one model. None found is an `ArtifactError` saying how to
    make one; a newer sidecar that cannot be read is one naming it (`list_artifacts`).
    """
    found = list_artifacts(exports_dir, name)
    if not found:
        what = f"no {name} artifact" if name else "no artifact"
        raise ArtifactError(
            f"{what} in {exports_dir}; make one with `ptxfast export --cascade eb3un+eb3 "
            f"--out {exports_dir}` (or --model NAME)"
        )
    return found[-1].path
