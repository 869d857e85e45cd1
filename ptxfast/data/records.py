"""Indexing CANDID-PTX and SIIM-ACR: the annotation CSVs, the images on disk, one `Record` each.

Both layouts become one list of `Record`s, one per unique image. A CSV row per pneumothorax means
an image can have several RLEs; its mask is their union. Images are found anywhere under the
dataset folder by file name; patient ids come from the CANDID file name or the DICOM header.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptxfast.data.rle import decode
from ptxfast.errors import PtxfastError

__all__ = [
    "CANDID_COLUMNS",
    "CANDID_CSV",
    "SIIM_COLUMNS",
    "SIIM_CSV",
    "DatasetError",
    "DatasetWarning",
    "Record",
    "load_records",
    "read_rows",
    "scan",
]

CANDID_CSV = "Pneumothorax_reports.csv"
SIIM_CSV = "train-rle.csv"
CANDID_COLUMNS = ("filename", "SOPInstanceUID", "StudyInstanceUID", "EncodedPixels", "Report")
SIIM_COLUMNS = ("ImageId", "EncodedPixels")
# Columns without which a row cannot be turned into a Record; the others are read when present.
_CANDID_REQUIRED = ("SOPInstanceUID", "EncodedPixels")
_SIIM_REQUIRED = SIIM_COLUMNS

_NEGATIVE_RLES = {"", "-1"}
_PATIENT_IN_FILENAME = re.compile(r"^(P\d+)_")
_MISSING_SHOWN = 5  # names listed in the missing-files warning before "... and N more"


class DatasetError(PtxfastError):
    """Unusable dataset input (missing CSV, wrong columns, stale splits.csv); the message names the fix."""


class DatasetWarning(UserWarning):
    """Something in the dataset was skipped or adjusted; training can go on."""


@dataclass(frozen=True)
class Record:
    """One unique image: where it is, whose it is, and the RLEs of its pneumothoraces (if any)."""

    image_id: str  # CANDID-PTX SOPInstanceUID or SIIM ImageId
    path: Path
    patient_id: str | None
    rles: tuple[str, ...] = ()  # one per pneumothorax; empty for a negative image

    @property
    def label(self) -> int:
        """1 when the image shows a pneumothorax, else 0."""
        return int(bool(self.rles))

    def mask(self, shape: tuple[int, int] = (1024, 1024)) -> np.ndarray:
        """Union of the image's RLE masks as a bool (H, W) array (all False for a negative)."""
        out = np.zeros(shape, dtype=bool)
        for rle in self.rles:
            out |= decode(rle, shape)
        return out


# ------------------------------------------------------------------------------- reading the CSVs


@dataclass
class _Entry:
    """An image as the annotation CSV lists it, before it is found on disk."""

    image_id: str
    names: list[str]  # file names (or root-relative paths) to look for, in order of preference
    rles: list[str] = field(default_factory=list)
    patient_id: str | None = None


def _norm(name: str) -> str:
    return name.strip().lower()


def _annotation_csv(root: Path) -> tuple[str, Path]:
    """Which layout `root` holds and its CSV; a clear error when neither is there."""
    for flavour, name in (("candid", CANDID_CSV), ("siim", SIIM_CSV)):
        if (root / name).is_file():
            return flavour, root / name
    raise DatasetError(
        f"no annotation CSV in {root}: expected {CANDID_CSV} (CANDID-PTX, columns "
        f"{', '.join(CANDID_COLUMNS)}) or {SIIM_CSV} (SIIM-ACR, columns {', '.join(SIIM_COLUMNS)}); "
        "point --data at the dataset folder"
    )


def read_rows(path: Path, expected: Sequence[str], required: Sequence[str]) -> Iterator[dict]:
    """Rows of `path` keyed by the expected column names, values stripped of stray whitespace."""
    # An RLE of a large pneumothorax can exceed csv's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, skipinitialspace=True)  # `a, "b, c"` quotes after a space
        header = next(reader, None)
        found = [h.strip() for h in header or []]
        index = {_norm(h): i for i, h in enumerate(found)}
        missing = [c for c in required if _norm(c) not in index]
        if missing:
            raise DatasetError(
                f"{path}: missing column(s) {', '.join(missing)}; expected columns "
                f"{', '.join(expected)} (found: {', '.join(found) or 'an empty file'})"
            )
        columns = {c: index[_norm(c)] for c in expected if _norm(c) in index}
        for line, row in enumerate(reader, start=2):
            if not any(v.strip() for v in row):
                continue  # blank line
            try:
                yield {c: row[i].strip() for c, i in columns.items()}
            except IndexError:
                raise DatasetError(
                    f"{path}, row {line}: {len(row)} values for {len(found)} columns; "
                    "fix or remove that row"
                ) from None


def _add_rle(entry: _Entry, rle: str) -> None:
    if rle not in _NEGATIVE_RLES:
        entry.rles.append(rle)


def _read_candid(path: Path) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for row in read_rows(path, CANDID_COLUMNS, _CANDID_REQUIRED):
        uid, filename = row["SOPInstanceUID"], row.get("filename", "")
        image_id = uid or Path(filename).stem
        if not image_id:
            continue
        entry = entries.get(image_id)
        if entry is None:
            names = [n for n in (filename, uid, f"{uid}.dcm" if uid else "") if n]
            if filename and not Path(filename).suffix:
                names.insert(1, f"{filename}.dcm")
            match = _PATIENT_IN_FILENAME.match(Path(filename).name)
            patient = match.group(1) if match else None
            entry = entries[image_id] = _Entry(image_id, names, patient_id=patient)
        _add_rle(entry, row["EncodedPixels"])
    return entries


def _read_siim(path: Path) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for row in read_rows(path, SIIM_COLUMNS, _SIIM_REQUIRED):
        image_id = row["ImageId"]
        if not image_id:
            continue
        entry = entries.get(image_id)
        if entry is None:
            entry = entries[image_id] = _Entry(image_id, [f"{image_id}.dcm", image_id])
        _add_rle(entry, row["EncodedPixels"])
    return entries


# --------------------------------------------------------------------------- finding the images


def _index_files(root: Path) -> dict[str, Path]:
    """File name -> path for every file under `root` (one walk; first in sorted order wins)."""
    index: dict[str, Path] = {}
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            index.setdefault(name, Path(dirpath) / name)
    return index


def _locate(entry: _Entry, root: Path, index: dict[str, Path]) -> Path | None:
    for name in entry.names:
        if "/" in name or "\\" in name:  # a root-relative path rather than a bare file name
            candidate = root / name
            if candidate.is_file():
                return candidate
            name = Path(name).name
        if name in index:
            return index[name]
    return None


def scan(root: Path) -> tuple[list[tuple[_Entry, Path]], list[str], Path]:
    """Entries found on disk (sorted by image id), names of the missing ones, and the CSV read."""
    flavour, csv_path = _annotation_csv(root)
    entries = _read_candid(csv_path) if flavour == "candid" else _read_siim(csv_path)
    if not entries:
        raise DatasetError(f"{csv_path} lists no images; check that it is the right file")
    index = _index_files(root)
    found, missing = [], []
    for image_id in sorted(entries):
        entry = entries[image_id]
        path = _locate(entry, root, index)
        if path is None:
            missing.append(entry.names[0])
        else:
            found.append((entry, path))
    if not found:
        raise DatasetError(
            f"none of the {len(entries)} images listed in {csv_path} were found under {root} "
            f"(looked for e.g. {entries[next(iter(entries))].names[0]}); check the folder"
        )
    return found, missing, csv_path


def _header_patient_id(path: Path) -> str | None:
    """PatientID from the DICOM header alone (no pixel data is read); None when unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"], force=True)
    except Exception:  # not DICOM (PNG), truncated, ...: the patient is simply unknown
        return None
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None


def load_records(root: str | Path) -> list[Record]:
    """Records of the CANDID-PTX or SIIM-ACR dataset in `root`, one per unique image, by image id.

    The layout is recognised by its CSV (`Pneumothorax_reports.csv` or `train-rle.csv`); images are
    found anywhere under `root`. Images listed but absent are skipped with one `DatasetWarning`.
    Patient ids come from the CANDID file name (`P<n>_...`), else from the DICOM header.
    """
    root = Path(root)
    found, missing, csv_path = scan(root)
    if missing:
        shown = ", ".join(missing[:_MISSING_SHOWN])
        more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
        warnings.warn(
            f"{len(missing)} of {len(missing) + len(found)} images listed in {csv_path.name} "
            f"were not found under {root} and are skipped: {shown}{more}",
            DatasetWarning,
            stacklevel=2,
        )
    return [
        Record(e.image_id, path, e.patient_id or _header_patient_id(path), tuple(e.rles))
        for e, path in found
    ]
