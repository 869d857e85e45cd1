"""What scoring opens and where it writes: regular files only, and its own output folders marked.

Regular files. A folder nobody vetted may hold a named pipe, a socket or a device node, and
opening a FIFO for reading blocks until someone writes to it: one such entry would hang the
scan forever with no row and no message. So an input is `stat`ed before anything opens it; an
entry that is not a regular file gets one error row, "not a regular file (a named pipe)", and is
never opened. Where an input is opened (`read_head`), it is opened with O_NONBLOCK and checked
again with `fstat` on the open descriptor, so an entry swapped for a FIFO after the `stat`
cannot block either.

Output folders. `--masks`, `--dicom-seg` and `--dicom-sr` get a small marker file,
`.ptxfast-output`; finding the inputs skips every folder that holds one, so a run whose outputs
went inside its input folder never scores its own masks, overlays, SEGs and SRs the next time.
An output folder inside the input folder is refused unless it is ptxfast's (marked already, or
new or empty, so it can hold no inputs): pointing `--masks` at a folder of radiographs would
mix outputs into inputs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = [
    "OUTPUT_MARKER", "NotRegular", "holds_inputs", "is_marked", "mark_output_folder", "not_regular",
    "read_head",
]  # fmt: skip

OUTPUT_MARKER = ".ptxfast-output"
_MARKER_TEXT = (
    "This folder holds outputs of `ptxfast score`; ptxfast skips it when it looks for inputs.\n"
)
_KINDS = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


class NotRegular(OSError):
    """An input that is not a regular file (a FIFO, a socket, a device): never read."""


def _reason(mode: int) -> str:
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    return f"not a regular file ({kind}); ptxfast reads regular files only"


def not_regular(path: str | os.PathLike) -> str | None:
    """Why `path` (symlinks followed) must not be opened, or None for a regular file or one
    that cannot be `stat`ed (reading it then says why)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _reason(mode)


def read_head(path: str | os.PathLike, n: int) -> bytes:
    """The first `n` bytes of the regular file `path` (fewer when it is shorter), read without
    ever blocking on a FIFO or a device: `NotRegular` for anything else, OSError when unreadable."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(_reason(mode))
        chunks, left = [], n
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def is_marked(folder: str | os.PathLike) -> bool:
    """True when `folder` holds ptxfast's output marker."""
    return os.path.isfile(os.path.join(folder, OUTPUT_MARKER))


def mark_output_folder(folder: Path) -> None:
    """Write the marker into the output folder `folder` (which exists), once."""
    marker = folder / OUTPUT_MARKER
    if not marker.is_file():
        marker.write_text(_MARKER_TEXT, encoding="utf-8")


def holds_inputs(folder: Path) -> bool:
    """True when `folder` exists, is not marked and holds anything (it may hold inputs)."""
    if not folder.is_dir() or is_marked(folder):
        return False
    with os.scandir(folder) as entries:
        return any(True for _ in entries)
