"""Datasets: index CANDID-PTX / SIIM-ACR, merge masks, make the paper's splits, schedule negatives.

Both layouts become one list of `Record`s, one per unique image. A CSV row per pneumothorax means
an image can have several RLEs; its mask is their union. The splits follow the paper (train 80% of
the positives plus as many negatives, val and test 10% each at 1 positive : 5 negatives, the
remaining negatives form the training pool), assign whole patients to val and test, and are written
to `splits.csv` beside the data so every later stage scores the same test set.

Randomness comes from hashing `(seed, key)` rather than from a generator: the order of an image or
patient then depends only on the seed and its own id, never on library versions or on the other
images, so a split or a rotation block can be recomputed exactly on resume.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ptxfast.data.dicom import load_image
from ptxfast.data.rle import decode

CANDID_CSV = "Pneumothorax_reports.csv"
SIIM_CSV = "train-rle.csv"
SPLITS_CSV = "splits.csv"
SPLIT_NAMES = ("train", "pool", "val", "test")
SPLITS_COLUMNS = ("image_id", "split", "label", "patient_id", "path", "n_masks")

CANDID_COLUMNS = ("filename", "SOPInstanceUID", "StudyInstanceUID", "EncodedPixels", "Report")
SIIM_COLUMNS = ("ImageId", "EncodedPixels")
# Columns without which a row cannot be turned into a Record; the others are read when present.
_CANDID_REQUIRED = ("SOPInstanceUID", "EncodedPixels")
_SIIM_REQUIRED = SIIM_COLUMNS

_NEGATIVE_RLES = {"", "-1"}
_PATIENT_IN_FILENAME = re.compile(r"^(P\d+)_")
_MISSING_SHOWN = 5  # names listed in the missing-files warning before "... and N more"


class DatasetError(ValueError):
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


def _read_rows(path: Path, expected: Sequence[str], required: Sequence[str]) -> Iterator[dict]:
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
    for row in _read_rows(path, CANDID_COLUMNS, _CANDID_REQUIRED):
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
    for row in _read_rows(path, SIIM_COLUMNS, _SIIM_REQUIRED):
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


def _scan(root: Path) -> tuple[list[tuple[_Entry, Path]], list[str], Path]:
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
    found, missing, csv_path = _scan(root)
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


# ------------------------------------------------------------------------------------- splitting


def _rank(seed: int, *key: object) -> bytes:
    """A stable pseudo-random sort key for `key` under `seed` (same on every machine and version)."""
    text = "\x1f".join(str(k) for k in (seed, *key))
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


@dataclass(frozen=True)
class SplitPlan:
    """How many positives and negatives each split should get."""

    train_pos: int
    train_neg: int
    val_pos: int
    val_neg: int
    test_pos: int
    test_neg: int
    pool: int
    scaled: bool  # negatives ran short and the negative quotas were scaled down


def plan_splits(n_pos: int, n_neg: int) -> SplitPlan:
    """The paper's proportions for `n_pos` positives and `n_neg` negatives.

    Positives 80/10/10 (train = floor(0.8 P), val and test share the rest), val and test at
    1 positive : 5 negatives, train negatives = train positives, the rest of the negatives the
    pool. At the paper's 3,196 / 16,041 this gives exactly 2556+2556, 320+1600, 320+1600.
    When there are too few negatives, the three negative quotas shrink in proportion.
    """
    train_pos = 4 * n_pos // 5
    val_pos = (n_pos - train_pos) // 2
    test_pos = n_pos - train_pos - val_pos
    val_neg, test_neg, train_neg = 5 * val_pos, 5 * test_pos, train_pos
    need = val_neg + test_neg + train_neg
    scaled = need > n_neg
    if scaled:
        val_neg = val_neg * n_neg // need
        test_neg = test_neg * n_neg // need
        train_neg = n_neg - val_neg - test_neg
    pool = n_neg - val_neg - test_neg - train_neg
    return SplitPlan(train_pos, train_neg, val_pos, val_neg, test_pos, test_neg, pool, scaled)


def make_splits(records: Iterable[Record], seed: int = 0) -> dict[str, list[Record]]:
    """Split records into "train", "pool", "val" and "test" the paper's way (see `plan_splits`).

    Whole patients go to test, then val, in a seeded order, each taken only if its images fit the
    remaining positive and negative quotas, so no patient is in two of train/val/test (train and
    pool may share patients: both are training data). Records without a patient id count as
    patients of their own. Every positive not in val/test is trained on. Deterministic for a seed
    and independent of the input order. Each list is sorted by image id.
    """
    records = sorted(records, key=lambda r: r.image_id)
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i, j in zip(ids, ids[1:], strict=False) if i == j)
        raise ValueError(f"image id {dup} appears in more than one record; merge them first")
    n_pos = sum(r.label for r in records)
    plan = plan_splits(n_pos, len(records) - n_pos)
    if plan.scaled:
        warnings.warn(
            f"only {len(records) - n_pos} negatives for {n_pos} positives: negative quotas scaled "
            f"down to train {plan.train_neg}, val {plan.val_neg}, test {plan.test_neg} (pool empty)",
            DatasetWarning,
            stacklevel=2,
        )

    patients: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        # A record without a patient id is its own patient; the prefix keeps it from colliding.
        patients[f"p:{r.patient_id}" if r.patient_id is not None else f"i:{r.image_id}"].append(r)
    order = sorted(patients, key=lambda p: (_rank(seed, "patient", p), p))

    taken: set[str] = set()
    held_out: dict[str, list[Record]] = {}
    for name, want_pos, want_neg in (
        ("test", plan.test_pos, plan.test_neg),
        ("val", plan.val_pos, plan.val_neg),
    ):
        chosen: list[Record] = []
        for p in order:
            if want_pos == 0 and want_neg == 0:
                break
            if p in taken:
                continue
            pos = sum(r.label for r in patients[p])
            neg = len(patients[p]) - pos
            if pos <= want_pos and neg <= want_neg:
                taken.add(p)
                chosen.extend(patients[p])
                want_pos, want_neg = want_pos - pos, want_neg - neg
        if want_pos or want_neg:
            pos = sum(r.label for r in chosen)
            neg = len(chosen) - pos
            warnings.warn(
                f"{name} split has {pos} positives + {neg} negatives instead of "
                f"{pos + want_pos} + {neg + want_neg}: no remaining patient fits the last "
                f"places without being split across train and {name}",
                DatasetWarning,
                stacklevel=2,
            )
        held_out[name] = sorted(chosen, key=lambda r: r.image_id)

    rest = [r for p in order if p not in taken for r in patients[p]]
    positives = [r for r in rest if r.label]
    negatives = sorted(
        (r for r in rest if not r.label), key=lambda r: _rank(seed, "neg", r.image_id)
    )
    # One train negative per train positive; when negatives ran short all left-overs train.
    n_train_neg = len(negatives) if plan.scaled else min(len(positives), len(negatives))
    train = positives + negatives[:n_train_neg]
    return {
        "train": sorted(train, key=lambda r: r.image_id),
        "pool": sorted(negatives[n_train_neg:], key=lambda r: r.image_id),
        "val": held_out["val"],
        "test": held_out["test"],
    }


def summarize_splits(splits: dict[str, list[Record]]) -> list[dict[str, int | str]]:
    """Per split: images, positives, negatives, patients (records without an id count singly)."""
    rows = []
    for name in SPLIT_NAMES:
        recs = splits.get(name, [])
        pos = sum(r.label for r in recs)
        patients = {r.patient_id if r.patient_id is not None else f"\0{r.image_id}" for r in recs}
        rows.append(
            {
                "split": name,
                "images": len(recs),
                "positive": pos,
                "negative": len(recs) - pos,
                "patients": len(patients),
            }
        )
    return rows


# ------------------------------------------------------------------------------------ splits.csv


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:  # not under root: keep it absolute so the file still says where it is
        return path.resolve().as_posix()


def write_splits(
    splits: dict[str, list[Record]], path: str | Path, root: str | Path | None = None
) -> Path:
    """Write `splits` to `path` atomically; image paths are stored relative to `root` (default: the
    folder of `path`). Columns: image_id, split, label, patient_id, path, n_masks."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    unknown = set(splits) - set(SPLIT_NAMES)
    if unknown:
        raise ValueError(f"unknown split name(s) {sorted(unknown)}; expected {SPLIT_NAMES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(SPLITS_COLUMNS)
            for name in SPLIT_NAMES:
                for r in splits.get(name, []):
                    writer.writerow(
                        [
                            r.image_id,
                            name,
                            r.label,
                            r.patient_id or "",
                            _relative(r.path, root),
                            len(r.rles),
                        ]
                    )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_splits(path: str | Path, root: str | Path | None = None) -> dict[str, list[Record]]:
    """Read a splits.csv and rebuild its Records from the dataset in `root` (default: its folder).

    Paths and RLEs come from the dataset itself (its CSV and the files on disk), patient ids from
    splits.csv (so no DICOM header is read). A splits.csv that no longer matches the data (images
    added, removed or relabelled) raises `DatasetError` asking for `ptxfast split --force`.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    if not path.is_file():
        raise DatasetError(f"{path} not found; make it with `ptxfast split --data {root}`")
    rows = list(_read_rows(path, SPLITS_COLUMNS, SPLITS_COLUMNS))
    found, _, csv_path = _scan(root)
    data = {e.image_id: (e, p) for e, p in found}

    fix = f"rerun `ptxfast split --data {root} --force` to remake it"
    seen: set[str] = set()
    splits: dict[str, list[Record]] = {name: [] for name in SPLIT_NAMES}
    gone, changed = [], []
    for row in rows:
        image_id, name = row["image_id"], row["split"]
        if name not in splits:
            raise DatasetError(f"{path}: unknown split {name!r} for {image_id}; {fix}")
        if image_id in seen:
            raise DatasetError(f"{path}: {image_id} is listed twice; {fix}")
        seen.add(image_id)
        if image_id not in data:
            gone.append(image_id)
            continue
        entry, image_path = data[image_id]
        if row["label"] != str(int(bool(entry.rles))) or row["n_masks"] != str(len(entry.rles)):
            changed.append(image_id)
            continue
        splits[name].append(
            Record(image_id, image_path, row["patient_id"] or None, tuple(entry.rles))
        )
    new = sorted(set(data) - seen)
    if gone or new or changed:
        problems = [
            f"{n} {what} (e.g. {ids[0]})"
            for n, what, ids in (
                (len(gone), "listed image(s) no longer in the data", gone),
                (len(new), "image(s) of the data not listed", new),
                (len(changed), "image(s) with a changed label or mask count", changed),
            )
            if n
        ]
        raise DatasetError(f"{path} is stale for {csv_path}: {'; '.join(problems)}; {fix}")
    for recs in splits.values():
        recs.sort(key=lambda r: r.image_id)
    return splits


def ensure_splits(root: str | Path, seed: int = 0, force: bool = False) -> dict[str, list[Record]]:
    """The dataset's splits: read from `root/splits.csv` when present (checked against the data),
    else made with `seed` and written there. An existing file wins over `seed`, so every stage
    scores the same test set; `force=True` remakes it."""
    root = Path(root)
    path = root / SPLITS_CSV
    if path.is_file() and not force:
        return read_splits(path, root)
    splits = make_splits(load_records(root), seed)
    write_splits(splits, path, root)
    return splits


# ----------------------------------------------------------------------------- negative rotation


NEGATIVE_STRATEGIES = ("rotate", "all", "grow")


class NegativeRotation:
    """The training set of an epoch: all train positives plus negatives by one of the paper's
    three ways of handling the imbalance (`strategy`):

    - "rotate": a block of `n_neg` negatives that changes every `every` epochs to negatives not
      yet seen (the paper's best);
    - "all": every negative (the split's train negatives and the pool) in every epoch;
    - "grow": the first block, then every `every` epochs one more block of `n_neg` unseen
      negatives added to those already in, until every negative is in.

    `negatives` is ordered: its first `n_neg` are the block of epochs 0..every-1 (the split's own
    train negatives), the rest (the pool) follow in a seeded order. When no unseen negatives are
    left, "rotate" starts a fresh seeded permutation of all negatives (negatives of the block in
    progress count as seen in it). `records(epoch)` is a pure function of the epoch, so resuming
    at any epoch gives the same data.
    """

    def __init__(
        self,
        positives: Sequence[Record],
        negatives: Sequence[Record],
        n_neg: int | None = None,
        every: int = 4,
        seed: int = 0,
        strategy: str = "rotate",
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1 epoch, got {every}")
        if strategy not in NEGATIVE_STRATEGIES:
            raise ValueError(
                f"negatives strategy {strategy!r}; choose one of {', '.join(NEGATIVE_STRATEGIES)}"
            )
        self.positives = list(positives)
        self.negatives = list(negatives)
        ids = [r.image_id for r in self.negatives]
        if len(set(ids)) != len(ids):
            raise ValueError("negatives contain the same image twice")
        n = len(self.positives) if n_neg is None else n_neg
        if n < 0:
            raise ValueError(f"n_neg must be >= 0, got {n_neg}")
        self.n_neg = min(n, len(self.negatives))
        self.every = every
        self.seed = seed
        self.strategy = strategy
        self._blocks: list[list[Record]] = [self.negatives[: self.n_neg]]
        self._state: tuple[int, list[Record]] = (
            0,
            sorted(self.negatives[self.n_neg :], key=lambda r: self._key(0, r)),
        )
        # The first pass in order: what "grow" adds a block of at a time.
        self._first_pass = self._blocks[0] + self._state[1]

    @classmethod
    def from_splits(
        cls,
        splits: dict[str, list[Record]],
        every: int = 4,
        seed: int = 0,
        strategy: str = "rotate",
    ) -> NegativeRotation:
        """Rotation over a split: train positives, train negatives first, then the pool."""
        train = splits["train"]
        initial = [r for r in train if not r.label]
        positives = [r for r in train if r.label]
        negatives = initial + list(splits["pool"])
        return cls(positives, negatives, len(initial), every, seed, strategy)

    def _key(self, cycle: int, r: Record) -> tuple[bytes, str]:
        return _rank(self.seed, "rotation", cycle, r.image_id), r.image_id

    def block(self, index: int) -> list[Record]:
        """The negatives of block `index` (epochs index*every .. index*every + every - 1)."""
        if index < 0:
            raise ValueError(f"block index must be >= 0, got {index}")
        # Blocks are built in order and memoised; each depends only on the constructor arguments.
        while len(self._blocks) <= index:
            cycle, queue = self._state
            block: list[Record] = []
            while len(block) < self.n_neg:
                if not queue:
                    cycle += 1
                    in_block = {r.image_id for r in block}
                    queue = sorted(
                        (r for r in self.negatives if r.image_id not in in_block),
                        key=lambda r, c=cycle: self._key(c, r),
                    )
                take = min(self.n_neg - len(block), len(queue))
                block.extend(queue[:take])
                queue = queue[take:]
            self._state = (cycle, queue)
            self._blocks.append(block)
        return list(self._blocks[index])

    def epoch_negatives(self, epoch: int) -> list[Record]:
        """The negatives trained on in `epoch`, by the strategy."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if self.strategy == "all":
            return list(self.negatives)
        if self.strategy == "grow":
            return self._first_pass[: self.n_neg * (epoch // self.every + 1)]
        return self.block(epoch // self.every)

    def records(self, epoch: int) -> list[Record]:
        """Positives then this epoch's negatives (the DataLoader shuffles)."""
        return self.positives + self.epoch_negatives(epoch)

    def __len__(self) -> int:
        """Images of the first epoch ("grow" has more later; `records` says exactly)."""
        return len(self.records(0))


# -------------------------------------------------------------------------------- torch dataset


def _area_resize(a: np.ndarray, size: int) -> np.ndarray:
    """Area-average `a` (H, W) to (size, size) float32: every output pixel is the mean of the input
    area it covers, so a mask pixel's value is the fraction of it that is foreground."""
    h, w = a.shape
    a = a.astype(np.float32, copy=False)
    if (h, w) == (size, size):
        return a.copy()
    if h % size == 0 and w % size == 0:  # exact block means, the common 1024 -> 512 / 256 / 64
        return a.reshape(size, h // size, size, w // size).mean(axis=(1, 3), dtype=np.float32)
    return np.asarray(
        Image.fromarray(a).resize((size, size), Image.Resampling.BOX), dtype=np.float32
    )


class PTXDataset(torch.utils.data.Dataset):
    """Images, masks and labels of a list of Records at `size`×`size`.

    Item: (image float32 1×S×S in [0, 1], mask float32 1×S×S in {0, 1}, label float32 0-d).
    The mask is the union of the RLEs decoded at the image's own shape, area-averaged to S×S and
    thresholded at 0.5. With `with_mask=False` no RLE is decoded and the mask is an empty tensor
    (shape (0,)), so items keep the same three fields. Holds no open files (worker-safe).

    `cache=True` keeps decoded items in memory (image as float16, mask as uint8), which saves
    re-decoding the same few hundred DICOMs every epoch of a small CPU run; pass a dict to share
    one cache between datasets (e.g. across negative-rotation blocks). Each DataLoader worker has
    its own copy, so the cache pays off with `num_workers=0` or `persistent_workers=True`.
    """

    def __init__(
        self,
        records: Sequence[Record],
        size: int,
        with_mask: bool = True,
        cache: bool | MutableMapping = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.records = list(records)
        self.size = size
        self.with_mask = with_mask
        self.cache: MutableMapping | None = {} if cache is True else (cache or None)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, record: Record) -> tuple[np.ndarray, np.ndarray | None]:
        image, info = load_image(record.path, self.size)
        if not self.with_mask:
            return image, None
        if not record.rles:
            return image, np.zeros((self.size, self.size), dtype=np.uint8)
        shape = (int(info.rows), int(info.columns))
        area = _area_resize(record.mask(shape), self.size)
        return image, (area >= 0.5).astype(np.uint8)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        record = self.records[index]
        key = (record.image_id, str(record.path), self.size, self.with_mask)
        if self.cache is not None and key in self.cache:
            image, mask = self.cache[key]
        else:
            image, mask = self._load(record)
            if self.cache is not None:
                image = image.astype(np.float16)
                self.cache[key] = (image, mask)
        image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        if mask is None:
            mask_t = torch.empty(0, dtype=torch.float32)
        else:
            mask_t = torch.from_numpy(mask.astype(np.float32))[None]
        return image_t, mask_t, torch.tensor(float(record.label), dtype=torch.float32)


__all__ = [
    "CANDID_COLUMNS",
    "SIIM_COLUMNS",
    "NEGATIVE_STRATEGIES",
    "SPLITS_COLUMNS",
    "SPLIT_NAMES",
    "DatasetError",
    "DatasetWarning",
    "NegativeRotation",
    "PTXDataset",
    "Record",
    "SplitPlan",
    "ensure_splits",
    "load_records",
    "make_splits",
    "plan_splits",
    "read_splits",
    "summarize_splits",
    "write_splits",
]
