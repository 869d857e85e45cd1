"""Writing files so that a crash, a kill or a full disk never leaves half a file behind.

One source for two rules every stage shares:
- `atomic_write`: write into a temporary file in the target's folder, then `os.replace` it onto
  the target, so readers see the old file or the new one, never a torn one.
- `json_clean`: the JSON ptxfast writes is strict — NaN and ±inf become null, paths strings,
  numpy scalars Python numbers — so any JSON reader (not only Python's) can load it.
`read_json` reads one back, an unreadable file being one line that names it and the fix.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_write",
    "json_clean",
    "read_json",
    "remove_partial_files",
    "write_json",
    "write_text",
]

# Temporary files this process is writing now: a process told to stop (a scorer's output
# writer whose scorer is gone) removes them before it exits.
_WRITING: set[Path] = set()


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then move it onto `path`; the
    temporary file is removed when `write` fails, and the previous `path` stays intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _WRITING.add(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _WRITING.discard(tmp)
    return path


def read_json(path: str | Path, error: type[Exception], fix: str, what: str = "") -> Any:
    """The JSON document in `path`; a file that cannot be read or parsed raises `error` with
    one line: "<what> <path> is not readable JSON (<why>); <fix>"."""
    from ptxfast.errors import first_line

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        name = f"{what} {path}" if what else str(path)
        raise error(f"{name} is not readable JSON ({first_line(err)}); {fix}") from None


def remove_partial_files() -> None:
    """Remove the temporary files of every `atomic_write` this process has in progress (called
    by a process that must exit at once, so that it leaves no `.<name>.<pid>.tmp` behind)."""
    for tmp in list(_WRITING):
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_text(path: str | Path, text: str) -> Path:
    """`text` into `path` atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_clean(value: Any) -> Any:
    """`value` with NaN/±inf as None, paths as str, numpy scalars and arrays as Python values,
    tuples as lists and dict keys as str (recursively)."""
    if isinstance(value, dict):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_clean(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, doc: Any, indent: int | None = 2) -> Path:
    """`doc` as strict JSON (through `json_clean`) into `path` atomically, ending in a newline."""
    text = json.dumps(json_clean(doc), indent=indent, allow_nan=False) + "\n"
    return write_text(path, text)
