"""Finding the inputs of a scoring run: which files under the folder are images, per shard.

The tree is walked recursively (names starting with "." are ignored, symlinked folders are
not followed) and the files are sorted by relative path. A file is an input when its bytes
say DICOM (`dicom.is_dicom`: the "DICM" preamble or a bare data set), PNG or JPEG, or when its
name claims to be one (.dcm/.dicom/.dic, .png, .jpg/.jpeg): a claimed file that is not what
it says gets a row with an error rather than being passed over silently. Files that cannot be
opened are rows with an error too. Everything else is skipped and counted. Only regular files
are opened (`folders`): a FIFO, a socket or a device is a row with the error "not a regular
file", and folders holding ptxfast's output marker (its `--masks`, `--dicom-seg`, `--dicom-sr`)
are not walked.

Sharding. `shard=(k, n)` keeps the k-th of every n files of the sorted list (i % n == k - 1),
so n processes, on one machine or many, cover the folder exactly once.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ptxfast.data.dicom import SNIFF_BYTES, looks_dicom
from ptxfast.score.config import ScoreConfig, ScoreError
from ptxfast.score.folders import is_marked, not_regular, read_head

__all__ = ["Inputs", "find_inputs", "parse_shard", "todo"]

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
PNG_SUFFIXES = frozenset({".png"})
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class Inputs:
    """The files of one shard: what will be scored and what was passed over."""

    inputs: list[str]  # relative POSIX paths, sorted
    skipped: list[str]
    candidates: int  # files in the whole tree (all shards), before sniffing
    # Makes the decoding Dataset when the inputs are fetched, not read from the folder
    # (a DICOMweb server: `dicomweb.FetchingFiles`); None: `decode.Files`.
    files: Callable | None = None


def parse_shard(text: str) -> tuple[int, int]:
    """ "K/N" → (K, N) with 1 ≤ K ≤ N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise ScoreError(f"--shard {text!r}: write K/N with 1 <= K <= N, e.g. --shard 2/4")
    return int(m[1]), int(m[2])


def _walk(root: Path, exclude: Sequence[Path]) -> list[str]:
    excluded = {os.path.normcase(os.path.abspath(p)) for p in exclude}
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        # Hidden folders (.git, .cache) and our own output folders (this run's, or marked by
        # any run) are not inputs.
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".")
            and os.path.normcase(os.path.abspath(os.path.join(folder, d))) not in excluded
            and not is_marked(os.path.join(folder, d))
        ]
        for name in files:
            full = os.path.join(folder, name)
            if name.startswith(".") or os.path.normcase(os.path.abspath(full)) in excluded:
                continue
            found.append(Path(os.path.relpath(full, root)).as_posix())
    found.sort()
    return found


def _claims_image(rel: str) -> bool:
    suffix = os.path.splitext(rel)[1].lower()
    return suffix in DICOM_SUFFIXES or suffix in PNG_SUFFIXES or suffix in JPEG_SUFFIXES


def _is_input(path: Path, rel: str) -> bool:
    """DICOM, PNG or JPEG by content, or a name claiming one; files that cannot be opened and
    entries that are not regular files (never opened) count too: their rows say why."""
    if not_regular(path):
        return True
    try:
        head = read_head(path, SNIFF_BYTES)
    except OSError:
        return True
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return True
    return _claims_image(rel) or looks_dicom(head)


def find_inputs(
    root: str | os.PathLike,
    shard: tuple[int, int] = (1, 1),
    exclude: Sequence[str | os.PathLike] = (),
) -> Inputs:
    """The input files of shard `shard` = (k, n) under `root`, in sorted relative-path order.

    The shard is cut from the sorted list of all files (i % n == k - 1), then only its own
    files are opened to decide what they are; `exclude` names files or folders to leave out
    (the run's own outputs when they sit inside `root`).
    """
    root = Path(root)
    k, n = shard
    if not 1 <= k <= n:
        raise ScoreError(f"shard {k}/{n}: K must be between 1 and N")
    candidates = _walk(root, [Path(p) for p in exclude])
    inputs, skipped = [], []
    for rel in candidates[k - 1 :: n]:
        (inputs if _is_input(root / rel, rel) else skipped).append(rel)
    return Inputs(inputs, skipped, len(candidates))


def todo(config: ScoreConfig, done: set[str]) -> tuple[Inputs, list[int]]:
    """The shard's inputs, and the positions of those without a row in the CSV yet (`done`,
    its paths): every engine scores exactly these. A DICOMweb source is listed by QIDO-RS."""
    if config.url:
        from ptxfast.score import dicomweb

        found = dicomweb.find_instances(config.pacs, config.shard, config.eligibility)
        found.files = functools.partial(dicomweb.FetchingFiles, options=config.pacs)
    else:
        found = find_inputs(config.root, config.shard, config.own_outputs())
    return found, [i for i, rel in enumerate(found.inputs) if rel not in done]
