"""`write_dataset`: draw, encode and write a planned dataset, in worker processes when large.

Same arguments, same bytes, whatever the number of workers: every image is drawn from its
plan alone (`render`), written where its layout puts it, and the CSV rows are sorted by
index before the CSV is written. A manifest (`synth.json`) says which dataset a folder holds
and whether it is complete, so a rerun into the same folder is recognised.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ptxfast.data.phantom import PhantomMeta, make_patient, make_phantom
from ptxfast.data.rle import encode
from ptxfast.data.synth.dicom_file import make_dicom
from ptxfast.data.synth.layout import CANDID_CSV, SIIM_CSV, relpath, write_csv
from ptxfast.data.synth.plan import ImagePlan, SynthError, plan_dataset
from ptxfast.data.synth.report import findings_report
from ptxfast.files import write_json

if TYPE_CHECKING:
    from rich.table import Table

MANIFEST = "synth.json"
GENERATOR_VERSION = 1  # bump when the same arguments start to produce different files
# What a previous `synth` run leaves in OUT; removed by `overwrite=True`. A stale splits.csv
# would point the training stages at images that no longer exist, so it goes too.
_OUTPUTS = ("images", "dicom-images-train", CANDID_CSV, SIIM_CSV, MANIFEST, "splits.csv")
_IN_PROCESS_MAX = 24  # smaller jobs skip the worker start-up (~1 s) and run here


@dataclass(frozen=True)
class SynthSummary:
    """What `write_dataset` wrote."""

    n_images: int
    n_positive: int
    n_rows: int  # CSV rows: one per pneumothorax, one per negative image
    n_patients: int
    seconds: float
    csv: Path
    out: Path
    fmt: str
    size: int
    workers: int
    transfer_syntaxes: dict[str, int] = field(default_factory=dict)  # name -> images
    photometric: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, int] = field(default_factory=dict)

    def table(self, preview: Path | None = None) -> Table:
        """What was written, as a rich Table (with the preview's path when one was saved)."""
        from rich.table import Table

        def counts(d: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))

        name = self.fmt.upper() if self.fmt == "siim" else "CANDID-PTX"
        table = Table(title=f"synthetic {name} phantoms", show_header=False)
        table.add_column(justify="right", style="bold")
        table.add_column()
        rate = self.n_images / max(self.seconds, 1e-9)
        rows = [
            (
                "images",
                f"{self.n_images} ({self.n_positive} with pneumothorax, {self.n_patients} patients)",
            ),
            ("CSV rows", f"{self.n_rows}  {self.csv}"),
            ("size", f"{self.size}×{self.size}, 12-bit"),
            ("DICOM", f"{counts(self.modalities)}; {counts(self.photometric)}"),
            ("transfer syntax", counts(self.transfer_syntaxes)),
            ("time", f"{self.seconds:.1f} s, {rate:.1f} images/s on {self.workers} worker(s)"),
        ]
        if preview:
            rows.append(("preview", str(preview)))
        for key, value in rows:
            table.add_row(key, value)
        return table


def render(job: ImagePlan) -> tuple[np.ndarray, list[np.ndarray], PhantomMeta, str]:
    """Draw the phantom of one planned image: (12-bit MONOCHROME2 image, masks, meta, report).

    The patient's habitus comes from `(seed, patient)` and the rest from `(seed, index)`, so
    an image is the same whichever process draws it.
    """
    patient = make_patient(np.random.default_rng([job.seed, job.patient, 0x9A7]))
    rng = np.random.default_rng([job.seed, job.index, 0x1A6E])
    image, masks, meta = make_phantom(rng, job.size, job.n_ptx, patient)
    return image, masks, meta, findings_report(meta, rng)


def _make_one(job: ImagePlan) -> dict:
    """Draw, encode and write one image; return its CSV rows and flavour (small, picklable)."""
    image, masks, meta, report = render(job)
    ds = make_dicom(image, meta, job, report)
    rel = relpath(job, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    path = Path(job.out) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return {
        "index": job.index,
        "filename": Path(rel).name,
        "relpath": rel,
        "sop": str(ds.SOPInstanceUID),
        "study": str(ds.StudyInstanceUID),
        "rles": [encode(m) for m in masks],
        "report": report,
        "syntax": job.syntax,
        "photometric": job.photometric,
        "modality": job.modality,
    }


def _manifest(n: int, seed: int, size: int, positive_rate: float, fmt: str) -> dict:
    """What identifies a dataset: the generator, its version and the arguments."""
    return {
        "generator": "ptxfast synth",
        "version": GENERATOR_VERSION,
        "n": n,
        "seed": seed,
        "size": size,
        "positive_rate": positive_rate,
        "format": fmt,
    }


def _prepare_out(out: Path, manifest: dict, overwrite: bool) -> None:
    """Refuse a non-empty OUT that holds something else; clear our own old outputs."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out} exists and is not a folder; choose another output path")
    out.mkdir(parents=True, exist_ok=True)
    entries = list(out.iterdir())
    if entries:
        previous = None
        try:
            previous = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError):
            pass
        same = isinstance(previous, dict) and {k: previous.get(k) for k in manifest} == manifest
        if not same and not overwrite:
            what = (
                "a different synthetic dataset"
                if previous
                else "files that are not a ptxfast synth dataset"
            )
            raise SynthError(
                f"{out} is not empty and holds {what}; choose an empty folder or pass --overwrite"
            )
        if not same:
            for name in _OUTPUTS:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    write_json(out / MANIFEST, {**manifest, "complete": False}, indent=1)


def _worker_init() -> None:
    """Keep freed image buffers in the worker's heap.

    glibc hands every multi-megabyte array back to the kernel when it is freed and faults it
    in again for the next image; at 1024² that page-fault traffic costs about a quarter of
    the time per image. Raising the mmap and trim thresholds keeps the pages (glibc only).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _run(jobs: list[ImagePlan], workers: int) -> Iterator[dict]:
    """Each job's row, here for a small set, else from `workers` spawned processes."""
    if workers <= 1 and len(jobs) <= _IN_PROCESS_MAX:
        yield from map(_make_one, jobs)
        return
    # spawn: a clean interpreter per worker, safe even when the parent has threads (torch).
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(8, len(jobs) // (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        yield from pool.map(_make_one, jobs, chunksize=chunk)


def write_dataset(
    out: Path | str,
    n: int,
    seed: int,
    size: int = 1024,
    positive_rate: float = 0.17,
    fmt: str = "candid",
    workers: int | None = None,
    overwrite: bool = False,
) -> SynthSummary:
    """Write `n` phantom DICOMs and the CSV of the `fmt` layout under `out`.

    Same arguments, same bytes, whatever `workers` is (default: min(2, CPUs)). A non-empty
    `out` holding anything but this same dataset is refused unless `overwrite`.
    """
    t0 = time.perf_counter()
    out = Path(out)
    jobs = plan_dataset(n, seed, size, positive_rate, fmt, out)
    manifest = _manifest(n, seed, size, positive_rate, fmt)
    _prepare_out(out, manifest, overwrite)
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    workers = max(1, min(int(workers), n))
    rows = sorted(_run(jobs, workers), key=lambda r: r["index"])
    csv_path = write_csv(out, fmt, rows)
    write_json(out / MANIFEST, {**manifest, "complete": True}, indent=1)
    return SynthSummary(
        n_images=n,
        n_positive=sum(1 for r in rows if r["rles"]),
        n_rows=sum(max(1, len(r["rles"])) for r in rows),
        n_patients=len({j.patient for j in jobs}),
        seconds=time.perf_counter() - t0,
        csv=csv_path,
        out=out,
        fmt=fmt,
        size=size,
        workers=workers,
        transfer_syntaxes=dict(Counter(r["syntax"] for r in rows)),
        photometric=dict(Counter(r["photometric"] for r in rows)),
        modalities=dict(Counter(r["modality"] for r in rows)),
    )
