"""The paper's splits: train / pool / val / test by whole patients, kept in `splits.csv`.

Train gets 80% of the positives plus as many negatives, val and test 10% each at 1 positive :
5 negatives, and the remaining negatives form the training pool; val and test take whole
patients. The split is written to `splits.csv` beside the data so every later stage scores the
same test set, and read back checked against the data. Orders come from `seeded.rank`, so a
split depends on the seed and the image ids alone.
"""

from __future__ import annotations

import csv
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ptxfast.data.records import DatasetError, DatasetWarning, Record, load_records, read_rows, scan
from ptxfast.data.seeded import rank
from ptxfast.files import atomic_write

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "SPLITS_COLUMNS",
    "SPLITS_CSV",
    "SPLIT_NAMES",
    "SplitPlan",
    "SplitsResult",
    "ensure_splits",
    "make_splits",
    "plan_splits",
    "read_splits",
    "split_dataset",
    "summarize_splits",
    "write_splits",
]

SPLITS_CSV = "splits.csv"
SPLIT_NAMES = ("train", "pool", "val", "test")
SPLITS_COLUMNS = ("image_id", "split", "label", "patient_id", "path", "n_masks")


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
    order = sorted(patients, key=lambda p: (rank(seed, "patient", p), p))

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
        (r for r in rest if not r.label), key=lambda r: rank(seed, "neg", r.image_id)
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

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
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

    return atomic_write(path, write)


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
    rows = list(read_rows(path, SPLITS_COLUMNS, SPLITS_COLUMNS))
    found, _, csv_path = scan(root)
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


@dataclass
class SplitsResult:
    """What `split_dataset` did: the splits, and whether `path` was read or written."""

    splits: dict[str, list[Record]]
    root: Path
    path: Path
    read: bool  # an existing splits.csv was read (and checked); else it was made with `seed`
    seed: int
    rows: list[dict[str, int | str]] = field(default_factory=list)  # `summarize_splits`

    def table(self) -> Table:
        """The per-split counts as a rich Table, with a total row."""
        from rich.table import Table

        columns = ("split", "images", "positive", "negative", "patients")
        table = Table(title=f"splits of {self.root}")
        for name in columns:
            table.add_column(name, justify="left" if name == "split" else "right")
        for row in self.rows:
            table.add_row(*(str(row[k]) for k in columns))
        totals = [sum(int(r[k]) for r in self.rows) for k in columns[1:4]]
        table.add_section()
        table.add_row("all", *map(str, totals), "")
        return table

    def message(self) -> str:
        """One line: which file was read or written."""
        if self.read:
            return f"read existing {self.path} (--seed applies when it is made; --force remakes it)"
        return f"wrote {self.path} (seed {self.seed})"


def split_dataset(root: str | Path, seed: int = 0, force: bool = False) -> SplitsResult:
    """`ensure_splits`, telling whether the existing splits.csv was read or a new one written."""
    root = Path(root)
    path = root / SPLITS_CSV
    read = path.is_file() and not force
    splits = ensure_splits(root, seed=seed, force=force)
    return SplitsResult(splits, root, path, read, seed, summarize_splits(splits))
