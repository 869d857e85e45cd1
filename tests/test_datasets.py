"""Datasets: CSV flavours, mask merging, the paper's splits, splits.csv, negative rotation, PTXDataset."""

from __future__ import annotations

import csv
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from ptxfast.cli import cli
from ptxfast.data import rle
from ptxfast.data.datasets import PTXDataset
from ptxfast.data.dicom import load_image
from ptxfast.data.records import DatasetError, DatasetWarning, Record, load_records
from ptxfast.data.rotation import NegativeRotation
from ptxfast.data.splits import (
    SPLITS_COLUMNS,
    ensure_splits,
    make_splits,
    plan_splits,
    read_splits,
    write_splits,
)

SHAPE = (32, 32)


def write_dicom(path: Path, uid: str, patient_id: str = "anon", seed: int = 0) -> None:
    """A 32×32 12-bit MONOCHROME2 DICOM with random pixels."""
    pixels = np.random.default_rng(seed).integers(0, 4096, SHAPE, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = f"{uid}.1"
    ds.SeriesInstanceUID = f"{uid}.2"
    ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.Rows, ds.Columns = SHAPE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# Column-major, relative starts: "0 5" is rows 0-4 of column 0, "3 4" rows 3-6 of column 0.
RLE_A, RLE_B = "0 5", "3 4"
CANDID_HEADER = [" filename", "SOPInstanceUID ", " StudyInstanceUID", "EncodedPixels ", "Report"]


@pytest.fixture
def candid(tmp_path: Path) -> Path:
    """A CANDID-PTX folder: a two-row positive, lookups by filename / uid.dcm / uid, two missing."""
    root = tmp_path / "candid"
    report = 'Right pneumothorax, "large".\nChest tube advised, urgently'
    rows = [
        ["P1_1.dcm", "1.1", "9.1", RLE_A, report],
        ["P1_1.dcm", " 1.1", "9.1", f" {RLE_B} ", "second, smaller"],
        ["P2_1.dcm", "1.2", "9.2", "-1", "no pneumothorax"],
        ["P3_1.dcm", "1.3", "9.3", " -1", ""],  # on disk as 1.3.dcm
        ["P4_7.dcm", "1.4", "9.4", "-1", "normal"],  # on disk as 1.4 (no extension)
        ["scan9.dcm", "1.9", "9.9", "-1", "no patient in the name"],
        ["P5_1.dcm", "1.5", "9.5", "-1", "missing"],
        ["P6_1.dcm", "1.6", "9.6", RLE_A, "missing too"],
    ]
    root.mkdir()
    write_csv(root / "Pneumothorax_reports.csv", CANDID_HEADER, rows)
    with open(root / "Pneumothorax_reports.csv", "a") as f:  # hand-written: quote after a space
        f.write('P7_1.dcm, 1.7, 9.7, -1, "Left, small\n""apical"" lucency"\n')
    write_dicom(root / "images" / "P7_1.dcm", "1.7", seed=7)
    write_dicom(root / "images" / "P1_1.dcm", "1.1", seed=1)
    write_dicom(root / "images" / "deep" / "er" / "P2_1.dcm", "1.2", seed=2)
    write_dicom(root / "by_uid" / "1.3.dcm", "1.3", seed=3)
    write_dicom(root / "by_uid" / "1.4", "1.4", seed=4)
    write_dicom(root / "images" / "scan9.dcm", "1.9", patient_id="HDR9", seed=9)
    return root


def test_candid_records_merge_lookup_and_missing(candid: Path) -> None:
    with pytest.warns(DatasetWarning) as caught:
        records = load_records(candid)
    assert len(caught) == 1, "missing files are reported in one warning"
    message = str(caught[0].message)
    assert "2 of 8" in message and "P5_1.dcm" in message and "P6_1.dcm" in message

    by_id = {r.image_id: r for r in records}
    assert sorted(by_id) == ["1.1", "1.2", "1.3", "1.4", "1.7", "1.9"]
    assert by_id["1.1"].rles == (RLE_A, RLE_B) and by_id["1.1"].label == 1
    assert by_id["1.2"].rles == () and by_id["1.2"].label == 0
    assert by_id["1.2"].path == candid / "images" / "deep" / "er" / "P2_1.dcm"
    assert by_id["1.3"].path.name == "1.3.dcm"
    assert by_id["1.4"].path.name == "1.4"
    assert [by_id[i].patient_id for i in ("1.1", "1.2", "1.3", "1.4")] == ["P1", "P2", "P3", "P4"]
    assert by_id["1.7"].label == 0 and by_id["1.7"].patient_id == "P7"
    assert by_id["1.9"].patient_id == "HDR9", "without a P<n>_ name the header's PatientID is used"


def test_record_mask_is_union_of_rows() -> None:
    record = Record("x", Path("x.dcm"), None, (RLE_A, RLE_B, "0 2 30 2"))
    mask = record.mask(SHAPE)
    expected = np.zeros(SHAPE, dtype=bool)
    expected[0:7, 0] = True  # RLE_A ∪ RLE_B
    expected[0:2, 1] = True  # the third run starts 30 after the end of the first
    np.testing.assert_array_equal(mask, expected)
    assert not Record("y", Path("y.dcm"), None).mask(SHAPE).any()


def test_siim_records(tmp_path: Path) -> None:
    root = tmp_path / "siim"
    root.mkdir()
    rows = [
        ["1.2.3.1", " -1"],
        ["1.2.3.2", f" {RLE_A}"],
        ["1.2.3.2", f" {RLE_B}"],
        ["1.2.3.3", "-1"],
    ]
    write_csv(root / "train-rle.csv", ["ImageId", " EncodedPixels"], rows)
    write_dicom(root / "dicom-images-train" / "s1" / "r1" / "1.2.3.1.dcm", "1.2.3.1", "pat-a")
    write_dicom(root / "dicom-images-train" / "s2" / "r2" / "1.2.3.2.dcm", "1.2.3.2", "pat-b")
    with pytest.warns(DatasetWarning, match=r"1 of 3 .*1\.2\.3\.3\.dcm"):
        records = load_records(root)
    assert [(r.image_id, r.patient_id, r.label) for r in records] == [
        ("1.2.3.1", "pat-a", 0),
        ("1.2.3.2", "pat-b", 1),
    ]
    assert records[1].rles == (RLE_A, RLE_B)
    assert records[1].mask(SHAPE)[:, 0].sum() == 7


def test_missing_or_wrong_csv_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Pneumothorax_reports.csv.*train-rle.csv"):
        load_records(tmp_path)
    write_csv(tmp_path / "Pneumothorax_reports.csv", ["name", "mask"], [["a", "-1"]])
    with pytest.raises(DatasetError, match=r"Pneumothorax_reports\.csv.*SOPInstanceUID"):
        load_records(tmp_path)


# ------------------------------------------------------------------------------------- splits


def synthetic_records(n: int, n_pos: int, seed: int = 0, max_per_patient: int = 4) -> list[Record]:
    """`n` in-memory records (no files), `n_pos` positive, patients of 1..max_per_patient images."""
    rng = np.random.default_rng(seed)
    positive = np.zeros(n, dtype=bool)
    positive[rng.choice(n, n_pos, replace=False)] = True
    sizes = rng.choice(np.arange(1, max_per_patient + 1), size=n, p=None)
    patient_of = np.repeat(np.arange(n), sizes)[:n]
    return [
        Record(f"img{i:05d}", Path(f"img{i:05d}.dcm"), f"P{patient_of[i]}", ("1 1",) if p else ())
        for i, p in enumerate(positive)
    ]


def counts(recs: list[Record]) -> tuple[int, int]:
    pos = sum(r.label for r in recs)
    return pos, len(recs) - pos


def assert_partition(records: list[Record], splits: dict[str, list[Record]]) -> None:
    """Every record in exactly one split; no patient in two of train(+pool) / val / test."""
    assert sorted(splits) == ["pool", "test", "train", "val"]
    ids = [r.image_id for recs in splits.values() for r in recs]
    assert sorted(ids) == sorted(r.image_id for r in records)
    assert all(not r.label for r in splits["pool"])
    groups = {
        "train": splits["train"] + splits["pool"],
        "val": splits["val"],
        "test": splits["test"],
    }
    patients = {k: {r.patient_id for r in v if r.patient_id is not None} for k, v in groups.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_paper_plan() -> None:
    plan = plan_splits(3196, 19237 - 3196)
    assert (plan.train_pos, plan.train_neg) == (2556, 2556)
    assert (plan.val_pos, plan.val_neg, plan.test_pos, plan.test_neg) == (320, 1600, 320, 1600)
    assert plan.pool == 19237 - 3196 - 2556 - 3200 and not plan.scaled


def test_full_size_splits_match_the_paper() -> None:
    records = synthetic_records(19237, 3196, seed=0)
    splits = make_splits(records, seed=0)
    assert counts(splits["train"]) == (2556, 2556)
    assert counts(splits["val"]) == (320, 1600)
    assert counts(splits["test"]) == (320, 1600)
    assert counts(splits["pool"]) == (0, 19237 - 3196 - 2556 - 3200)
    assert_partition(records, splits)


@pytest.mark.parametrize(
    ("n", "n_pos", "expected"),
    [
        # (train pos, train neg), (val pos, val neg), (test pos, test neg), pool
        (400, 68, ((54, 54), (7, 35), (7, 35), 208)),
        (60, 10, ((8, 8), (1, 5), (1, 5), 32)),
    ],
)
def test_small_splits_keep_the_proportions(n: int, n_pos: int, expected: tuple) -> None:
    records = synthetic_records(n, n_pos, seed=3, max_per_patient=3)
    splits = make_splits(records, seed=0)
    train, val, test, pool = expected
    assert counts(splits["train"]) == train
    assert counts(splits["val"]) == val
    assert counts(splits["test"]) == test
    assert counts(splits["pool"]) == (0, pool)
    assert_partition(records, splits)


def test_short_negatives_scale_down_and_warn() -> None:
    records = synthetic_records(30, 20, seed=1, max_per_patient=1)
    with pytest.warns(DatasetWarning, match="scaled"):
        splits = make_splits(records)
    assert counts(splits["val"]) == (2, 2) and counts(splits["test"]) == (2, 2)
    assert counts(splits["train"]) == (16, 6) and splits["pool"] == []


def test_splits_deterministic_for_a_seed() -> None:
    records = synthetic_records(400, 68, seed=5)
    a = make_splits(records, seed=7)
    shuffled = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
    assert make_splits(shuffled, seed=7) == a, "same seed, any input order -> same split"
    b = make_splits(records, seed=8)
    assert {r.image_id for r in a["test"]} != {r.image_id for r in b["test"]}
    assert counts(b["test"]) == counts(a["test"])


@st.composite
def record_sets(draw) -> list[Record]:
    n = draw(st.integers(1, 80))
    labels = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    known = draw(st.booleans())
    patients = draw(st.lists(st.integers(0, max(1, n // 2)), min_size=n, max_size=n))
    return [
        Record(f"i{i}", Path(f"i{i}"), f"P{p}" if known else None, ("1 1",) if y else ())
        for i, (y, p) in enumerate(zip(labels, patients, strict=True))
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=record_sets(), seed=st.integers(0, 3))
def test_split_invariants(records: list[Record], seed: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        splits = make_splits(records, seed)
    assert_partition(records, splits)
    n_pos = sum(r.label for r in records)
    plan = plan_splits(n_pos, len(records) - n_pos)
    for name, quota in (
        ("val", (plan.val_pos, plan.val_neg)),
        ("test", (plan.test_pos, plan.test_neg)),
    ):
        got = counts(splits[name])
        assert got[0] <= quota[0] and got[1] <= quota[1]
        if records[0].patient_id is None:  # one image per "patient": quotas are met exactly
            assert got == quota
    train_pos, train_neg = counts(splits["train"])
    assert train_pos == n_pos - counts(splits["val"])[0] - counts(splits["test"])[0]
    assert train_neg == train_pos or not splits["pool"]


# --------------------------------------------------------------------------------- splits.csv


@pytest.fixture
def candid_40(tmp_path: Path) -> Path:
    """A 40-image CANDID-PTX folder, 8 positives, patients of one or two images."""
    root = tmp_path / "candid40"
    root.mkdir()
    rows = []
    for i in range(40):
        name, uid = f"P{i // 2}_{i % 2}.dcm", f"2.{i}"
        rles = [RLE_A, RLE_B] if i == 0 else [RLE_A] if i % 5 == 0 else ["-1"]
        rows += [[name, uid, f"3.{i}", r, "report"] for r in rles]
        write_dicom(root / "images" / name, uid, seed=i)
    write_csv(root / "Pneumothorax_reports.csv", CANDID_HEADER, rows)
    return root


def test_splits_csv_round_trip_and_staleness(candid_40: Path) -> None:
    splits = ensure_splits(candid_40, seed=0)
    path = candid_40 / "splits.csv"
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == SPLITS_COLUMNS
    assert len(table) == 40
    first = next(row for row in table if row["image_id"] == "2.0")
    assert first["path"] == "images/P0_0.dcm" and first["n_masks"] == "2" and first["label"] == "1"
    assert first["patient_id"] == "P0"

    assert read_splits(path) == splits
    assert ensure_splits(candid_40, seed=1) == splits, "an existing splits.csv wins over the seed"
    assert ensure_splits(candid_40, seed=1, force=True) != splits

    (candid_40 / "images" / "P3_1.dcm").unlink()
    with pytest.raises(DatasetError, match=r"stale.*no longer in the data.*--force"):
        ensure_splits(candid_40)
    with pytest.warns(DatasetWarning, match="P3_1.dcm"):
        remade = ensure_splits(candid_40, force=True)
    assert sum(len(v) for v in remade.values()) == 39


def test_write_splits_elsewhere_keeps_paths_relative_to_root(candid_40: Path, tmp_path: Path):
    splits = make_splits(load_records(candid_40))
    out = write_splits(splits, tmp_path / "elsewhere" / "splits.csv", root=candid_40)
    assert read_splits(out, root=candid_40) == splits


def test_split_command(candid_40: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["split", "--data", str(candid_40), "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "test" in result.output
    assert (candid_40 / "splits.csv").is_file()
    again = runner.invoke(cli, ["split", "--data", str(candid_40)])
    assert again.exit_code == 0 and "read existing" in again.output

    write_csv(
        candid_40 / "Pneumothorax_reports.csv", CANDID_HEADER, [["P0_0.dcm", "2.0", "", "-1", ""]]
    )
    stale = runner.invoke(cli, ["split", "--data", str(candid_40)])
    assert stale.exit_code != 0 and "--force" in stale.output


# --------------------------------------------------------------------------- negative rotation


def negatives(n: int) -> list[Record]:
    return [Record(f"n{i:03d}", Path(f"n{i}"), None) for i in range(n)]


def ids(recs: list[Record]) -> list[str]:
    return [r.image_id for r in recs]


def test_rotation_blocks() -> None:
    pos = [Record(f"p{i}", Path(f"p{i}"), None, ("1 1",)) for i in range(10)]
    neg = negatives(45)  # the first 10 are the split's train negatives, 35 form the pool
    rot = NegativeRotation(pos, neg, n_neg=10, every=4, seed=0)
    for epoch in range(4):
        assert rot.records(epoch) == pos + neg[:10]
    blocks = [set(ids(rot.block(b))) for b in range(6)]
    assert all(len(b) == 10 for b in blocks)
    assert rot.records(5)[10:] == rot.block(1) and rot.records(8)[10:] == rot.block(2)
    # blocks 0-3 never repeat a negative; block 4 ends the unseen ones (5) and starts a new pass
    seen_first_pass = set().union(*blocks[:4])
    assert len(seen_first_pass) == 40
    assert set(ids(neg)) - seen_first_pass <= blocks[4]
    assert len(set(ids(neg)) - seen_first_pass) == 5
    assert len(blocks[4] & blocks[5]) == 0


def test_rotation_is_a_pure_function_of_epoch() -> None:
    pos, neg = [], negatives(30)
    a = NegativeRotation(pos, neg, n_neg=7, seed=3)
    in_order = [ids(a.records(e)) for e in range(0, 40, 4)]
    b = NegativeRotation(pos, neg, n_neg=7, seed=3)
    backwards = [ids(b.records(e)) for e in reversed(range(1, 41, 4))][::-1]
    assert in_order == backwards
    assert ids(NegativeRotation(pos, neg, 7, seed=4).records(4)) != in_order[1]


def test_rotation_from_splits() -> None:
    splits = make_splits(synthetic_records(400, 68, seed=2))
    rot = NegativeRotation.from_splits(splits, every=4, seed=0)
    train_neg = [r for r in splits["train"] if not r.label]
    assert sorted(ids(rot.records(3))) == sorted(ids(splits["train"]))
    block1 = rot.records(4)
    assert len(block1) == len(splits["train"]) == len(rot)
    assert not set(ids(block1)) & set(ids(train_neg))
    assert set(ids(r for r in block1 if not r.label)) <= set(ids(splits["pool"]))


def test_negatives_all_trains_every_negative_every_epoch() -> None:
    pos = [Record(f"p{i}", Path(f"p{i}"), None, ("1 1",)) for i in range(10)]
    neg = negatives(45)
    rot = NegativeRotation(pos, neg, n_neg=10, every=4, seed=0, strategy="all")
    for epoch in (0, 3, 4, 17):
        assert rot.records(epoch) == pos + neg
    assert len(rot) == 55


def test_negatives_grow_adds_unseen_blocks_until_the_pool_is_used_up() -> None:
    pos = [Record(f"p{i}", Path(f"p{i}"), None, ("1 1",)) for i in range(10)]
    neg = negatives(45)
    grow = NegativeRotation(pos, neg, n_neg=10, every=4, seed=0, strategy="grow")
    rotate = NegativeRotation(pos, neg, n_neg=10, every=4, seed=0)
    counts = [len(grow.epoch_negatives(e)) for e in range(0, 24, 4)]
    assert counts == [10, 20, 30, 40, 45, 45]  # a block of 10 every 4 epochs, then all 45
    assert grow.records(3) == pos + neg[:10]  # balanced at first, the split's own negatives
    for e in range(24):
        now = ids(grow.epoch_negatives(e))
        assert len(set(now)) == len(now)  # no negative twice in one epoch
        if e:  # nothing seen is dropped: each epoch keeps the last one's and adds unseen ones
            before = ids(grow.epoch_negatives(e - 1))
            assert now[: len(before)] == before
    # The blocks it adds are the rotation's blocks, in the same order, while unseen ones last.
    for b in range(4):
        assert grow.epoch_negatives(4 * b)[10 * b :] == rotate.block(b)
    assert set(ids(grow.epoch_negatives(16))) == set(ids(neg))


@pytest.mark.parametrize("strategy", ["rotate", "all", "grow"])
def test_negative_strategies_resume_exactly(strategy: str) -> None:
    splits = make_splits(synthetic_records(400, 68, seed=2))
    fresh = NegativeRotation.from_splits(splits, every=2, seed=5, strategy=strategy)
    in_order = [ids(fresh.records(e)) for e in range(12)]
    # A resumed run builds its schedule anew and asks for a later epoch first.
    resumed = NegativeRotation.from_splits(splits, every=2, seed=5, strategy=strategy)
    assert [ids(resumed.records(e)) for e in range(7, 12)] == in_order[7:]
    train_pos = {r.image_id for r in splits["train"] if r.label}
    pool_and_train = {r.image_id for r in splits["train"] + splits["pool"] if not r.label}
    for epoch_ids in in_order:
        assert train_pos <= set(epoch_ids)
        assert set(epoch_ids) - train_pos <= pool_and_train
    n_train_neg = sum(1 for r in splits["train"] if not r.label)
    first = len(in_order[0]) - len(train_pos)
    assert first == (len(pool_and_train) if strategy == "all" else n_train_neg)


def test_negative_strategy_unknown() -> None:
    with pytest.raises(ValueError, match="choose one of rotate, all, grow"):
        NegativeRotation([], negatives(3), strategy="some")


# ------------------------------------------------------------------------------------ PTXDataset


def test_ptx_dataset(tmp_path: Path) -> None:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[8:12, 8:12] = True  # a 4×4 block -> a 2×2 block at 16²
    mask[20, 20] = True  # a quarter of an output pixel -> dropped
    mask[26, 4:6] = True  # half of an output pixel -> kept (>= 0.5)
    write_dicom(tmp_path / "pos.dcm", "5.1", seed=1)
    write_dicom(tmp_path / "neg.dcm", "5.2", seed=2)
    pos = Record("5.1", tmp_path / "pos.dcm", "P1", (rle.encode(mask),))
    neg = Record("5.2", tmp_path / "neg.dcm", "P2")

    ds = PTXDataset([pos, neg], size=16)
    image, m, label = ds[0]
    assert image.shape == m.shape == (1, 16, 16)
    assert image.dtype == m.dtype == label.dtype == torch.float32 and label.shape == ()
    assert 0 <= image.min() and image.max() <= 1 and label.item() == 1.0
    torch.testing.assert_close(image[0], torch.from_numpy(load_image(pos.path, 16)[0]))
    expected = np.zeros((16, 16), dtype=np.float32)
    expected[4:6, 4:6] = 1
    expected[13, 2] = 1
    np.testing.assert_array_equal(m[0].numpy(), expected)
    _, m_neg, label_neg = ds[1]
    assert m_neg.sum() == 0 and label_neg.item() == 0.0

    cached = PTXDataset([pos, neg], size=16, cache=True)
    for i in range(2):
        for _ in range(2):  # second read comes from the cache
            a, b = ds[i], cached[i]
            torch.testing.assert_close(b[0], a[0], atol=1e-3, rtol=0)
            torch.testing.assert_close(b[1], a[1])
    assert len(cached.cache) == 2

    no_mask = PTXDataset([pos, neg], size=16, with_mask=False)
    assert no_mask[0][1].numel() == 0 and no_mask[0][2].item() == 1.0

    clone = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker receives
    batch = next(iter(torch.utils.data.DataLoader(clone, batch_size=2)))
    assert [t.shape for t in batch] == [(2, 1, 16, 16), (2, 1, 16, 16), (2,)]
