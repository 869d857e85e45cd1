"""What scoring writes besides preds.csv, and when: PNG masks and overlays, DICOM SEG and SR
(`dicom_out`), safe output names, and `OutputWriter`, which turns scored batches into rows and
writes their outputs in a pool of processes (or threads) while scoring goes on.

Every writer works at the source image's resolution: the model's S×S probability map is
resized (bilinear) to the stored Rows×Columns before thresholding, so outlines follow the
anatomy rather than S×S blocks. Files are written through a temporary name and `os.replace`
(`files.atomic_write`), so an interrupted run never leaves a half-written mask behind (a
resumed run rewrites it).

Names. Every per-image output name comes from `safe_output_path`: names taken from file
contents (a SOPInstanceUID) or from the input tree (a relative path mirrored under the output
folder) are used only when they are harmless, and the path is checked to lie inside its
folder before anything is written, so a crafted DICOM cannot place a file elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ptxfast.data.dicom import load_image, read_dataset
from ptxfast.data.dicom.info import describe, one_line
from ptxfast.data.resize import resize
from ptxfast.errors import PtxfastError
from ptxfast.files import atomic_write
from ptxfast.safe_text import visible
from ptxfast.score import ledger, library_messages
from ptxfast.score.dicom_out import ModelIdentity, write_dicom_seg, write_dicom_sr
from ptxfast.score.processes import clean_fork, helper_started, start_method

if TYPE_CHECKING:
    from ptxfast.score.decode import Batch

__all__ = [
    "MASK_SUFFIXES", "ModelIdentity", "OutputJob", "OutputName", "OutputStats", "OutputWriter",
    "UnsafeOutputPath", "Written", "is_dicom_uid", "mask_outputs", "output_pool", "overlay_rgb",
    "safe_output_path", "source_mask", "write_dicom_seg", "write_dicom_sr", "write_outputs",
    "write_png_masks",
]  # fmt: skip

_OUTLINE_RGB = (255, 40, 40)
# The overlay PNG's palette: gray 0..254 spread over 0..255, then the outline colour at 255.
_PALETTE = [round(i * 255 / 254) for i in range(255) for _ in range(3)] + list(_OUTLINE_RGB)
# DICOM UI values (PS3.5 9.1): components of digits separated by dots, at most 64 characters.
# Leading zeros (not conformant, seen in the wild) are harmless in a file name and kept.
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_MAX = 64
_NAME_MAX = 255  # bytes in one path component on common Linux file systems
_HASH_CHARS = 32  # of the sha256 hex digest naming an output whose own name is unusable


class UnsafeOutputPath(PtxfastError):
    """An output path that would resolve outside its folder (e.g. through a symlink there)."""


@dataclass(frozen=True)
class OutputName:
    """Where one per-image output goes, and whether its natural name had to be replaced."""

    path: Path
    replaced: bool  # the UID or input path was unusable; a hash of the source path names it


def is_dicom_uid(text: str) -> bool:
    """True when `text` is a DICOM UI value: digits and dots, at most 64 characters."""
    return len(text) <= _UID_MAX and _UID.fullmatch(text) is not None


def _hashed(rel: str) -> str:
    return hashlib.sha256(os.fsencode(rel)).hexdigest()[:_HASH_CHARS]


def _mirrorable(rel: str, suffix: str) -> bool:
    parts = rel.split("/")
    return (
        bool(rel)
        and not rel.startswith("/")
        and "\0" not in rel
        and all(p not in ("", ".", "..") for p in parts)
        and all(len(os.fsencode(p)) <= _NAME_MAX for p in parts[:-1])
        and len(os.fsencode(parts[-1] + suffix)) <= _NAME_MAX
    )


def safe_output_path(
    folder: str | os.PathLike, rel: str, suffix: str, *, uid: str | None = None
) -> OutputName:
    """The path of an output for the input `rel` (relative, "/"-separated) in `folder`.

    With `uid` (a SOPInstanceUID read from the file), the output is `<folder>/<uid><suffix>`
    when `uid` is a valid DICOM UID; without it, the input's path is mirrored,
    `<folder>/<rel><suffix>`, when its parts are plain names. Anything else (slashes, "..",
    an absolute path, a NUL byte, an over-long name) is replaced by a stable name,
    `<folder>/<sha256 of rel, 32 hex digits><suffix>`, and `replaced` says so. The resolved
    path must lie inside the resolved folder (a symlink in the output tree pointing out is
    refused with UnsafeOutputPath). Nothing is created here: callers make the parent folders
    of the returned path, which lie inside `folder`.
    """
    folder = Path(folder)
    if uid is not None:
        replaced = not is_dicom_uid(uid)
        name = _hashed(rel) if replaced else uid
        path = folder / f"{name}{suffix}"
    else:
        replaced = not _mirrorable(rel, suffix)
        path = folder / f"{_hashed(rel)}{suffix}" if replaced else folder / f"{rel}{suffix}"
    base = folder.resolve()
    if not path.resolve().is_relative_to(base) or path.resolve() == base:
        raise UnsafeOutputPath(
            f"{path} resolves to {path.resolve()}, outside {base}; remove the link that "
            "leads out of the output folder"
        )
    return OutputName(path, replaced)


MASK_SUFFIXES = (".mask.png", ".overlay.png")


def mask_outputs(masks_dir: str | os.PathLike, rel: str) -> tuple[OutputName, OutputName]:
    """Where `score --masks` writes the mask PNG and the overlay PNG of the input `rel` (and
    where the report looks for them)."""
    mask, overlay = (safe_output_path(masks_dir, rel, s) for s in MASK_SUFFIXES)
    return mask, overlay


def source_mask(prob: np.ndarray, rows: int, columns: int, threshold: float) -> np.ndarray:
    """The S×S probability map `prob` resized to rows×columns and thresholded (bool)."""
    from PIL import Image

    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != (rows, columns):
        prob = np.asarray(
            Image.fromarray(prob, mode="F").resize((columns, rows), Image.Resampling.BILINEAR)
        )
    return prob > threshold


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask, thickened for large images."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    edge = mask & ~inner
    # About one outline pixel per 512 of image side, so the outline stays visible when a
    # 3000-pixel radiograph is viewed scaled down.
    for _ in range(max(0, max(mask.shape) // 512 - 1)):
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:-1, :] |= edge[1:, :]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge


def _save_png(image, path: Path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=3))


def write_png_masks(
    mask: np.ndarray, image: np.ndarray, mask_path: Path, overlay_path: Path
) -> None:
    """Write the mask (0/255 grayscale PNG) and an overlay (the image with the mask outlined).

    `mask` is bool rows×columns, `image` float32 rows×columns in [0, 1] (air dark).
    """
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    _save_png(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), mask_path)
    _save_png(_overlay_palette(image, mask), overlay_path)


def _overlay_palette(image: np.ndarray, mask: np.ndarray):
    """The overlay as an 8-bit palette image: 255 gray levels and the outline colour. One byte
    a pixel instead of three, and no per-row filter search, so the PNG encodes ~2× faster than
    RGB at the same size (a 1024² radiograph: 61 against 134 ms, 717 against 721 kB)."""
    from PIL import Image

    index = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 254.0), 0, 254).astype(np.uint8)
    index[_outline(mask)] = 255
    out = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
    out.putpalette(_PALETTE)
    return out


def overlay_rgb(image: np.ndarray, mask: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """The image (float [0, 1], rows×columns) as uint8 RGB with the mask (bool) outlined, and
    tinted inside with opacity `fill` (0: outline only, as the overlay PNGs are written)."""
    gray = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    if fill > 0:
        tint = np.asarray(_OUTLINE_RGB, dtype=np.float32)
        rgb[mask] = np.rint((1 - fill) * rgb[mask] + fill * tint).astype(np.uint8)
    rgb[_outline(mask)] = _OUTLINE_RGB
    return rgb


# ------------------------------------------------------------------------ the writer


@dataclass(frozen=True)
class OutputJob:
    """One scored file's outputs to write, with everything a writing process needs (plain
    values: the job crosses to a process that never imports torch)."""

    root: Path
    rel: str
    sop_instance_uid: str | None
    rows: int
    columns: int
    dicom: bool
    score: float
    positive: bool
    prob: np.ndarray | None  # a positive's S×S mask probabilities, when masks are written
    masks_dir: Path | None
    seg_dir: Path | None
    sr_dir: Path | None
    identity: ModelIdentity


@dataclass
class Written:
    """What one file's outputs came to; the writer adds it to its `OutputStats`."""

    rel: str = ""  # the input, as its CSV row names it
    masks: int = 0
    segs: int = 0
    srs: int = 0
    seg_not_dicom: int = 0
    sr_not_dicom: int = 0
    replaced: bool = False  # an output of this file got a hash name
    errors: list[str] = field(default_factory=list)
    # pydicom/highdicom warnings and log records raised while writing them: they quote header
    # values (a patient's name), so they are counted, never printed (`library_messages`).
    library_messages: int = 0


@dataclass
class OutputStats:
    """What a run's output files came to, summed over each file's `Written`."""

    masks_written: int = 0
    segs_written: int = 0
    seg_not_dicom: int = 0  # positives read from PNG/JPEG: mask PNGs but no DICOM SEG
    srs_written: int = 0
    sr_not_dicom: int = 0  # scored PNG/JPEG inputs, which get no DICOM SR
    names_replaced: int = 0  # inputs whose outputs got a hash name (`safe_output_path`)
    library_messages: int = 0  # counted, never printed: they may quote header values
    output_errors: list[str] = field(default_factory=list)

    def add(self, done: Written) -> None:
        """Count one file's outputs (each input's are written once, so counted once)."""
        self.masks_written += done.masks
        self.segs_written += done.segs
        self.srs_written += done.srs
        self.seg_not_dicom += done.seg_not_dicom
        self.sr_not_dicom += done.sr_not_dicom
        self.output_errors.extend(visible(e) for e in done.errors)
        self.library_messages += done.library_messages
        self.names_replaced += done.replaced


@dataclass
class _Target:
    """The output file being written, named in a write failure."""

    path: Path | None = None


def write_outputs(job: OutputJob) -> Written:
    """Write one scored file's outputs: a positive's masks and SEG, then its SR.

    Problems of the file itself (a source that no longer reads, a name that would lead
    outside its folder) are `Written.errors`, reported beside the row; a destination that
    cannot be written raises `ledger.WriteFailed`, which keeps the batch's rows out of the CSV.
    """
    done = Written(job.rel)
    with library_messages.captured() as heard:
        seg = _masks_and_seg(job, done) if job.prob is not None else None
        if job.sr_dir is not None:
            _report(job, seg, done)
    done.library_messages = heard.messages
    return done


@contextlib.contextmanager
def _guard(job: OutputJob, done: Written) -> Iterator[_Target]:
    """Problems of the file itself go to `done.errors`; a destination that cannot be written
    (the body sets `target.path` to what it writes) raises `ledger.WriteFailed` (so `--resume`
    writes row and outputs again)."""
    target = _Target()
    path = job.root / job.rel
    try:
        yield target
    except OSError as err:
        if ledger.is_write_error(err):
            raise ledger.write_failed(target.path or err.filename or job.root, err) from None
        done.errors.append(f"{job.rel}: {one_line(err, path)}")
    except Exception as err:
        done.errors.append(f"{job.rel}: {one_line(err, path)}")


def _masks_and_seg(job: OutputJob, done: Written) -> Path | None:
    """One positive's masks and SEG; returns the SEG's path when one was written."""
    seg = None
    with _guard(job, done) as target:  # the score stands; a missing mask is reported
        mask = source_mask(job.prob, job.rows, job.columns, job.identity.pixel_threshold)
        if job.masks_dir is not None:
            image, _ = load_image(job.root / job.rel)
            if image.shape != mask.shape:  # a reader that disagrees with its header
                image = resize(image, mask.shape)
            names = mask_outputs(job.masks_dir, job.rel)
            target.path = names[0].path
            write_png_masks(mask, image, names[0].path, names[1].path)
            done.masks += 1
            done.replaced |= any(n.replaced for n in names)
        if job.seg_dir is not None:
            if not job.dicom:
                done.seg_not_dicom += 1
            elif not job.sop_instance_uid:
                done.errors.append(f"{job.rel}: no SOPInstanceUID, so no DICOM SEG")
            else:
                source = read_dataset(job.root / job.rel, stop_before_pixels=True)
                name = safe_output_path(job.seg_dir, job.rel, ".dcm", uid=job.sop_instance_uid)
                target.path = name.path
                seg = write_dicom_seg(source, mask, name.path, job.identity)
                done.segs += 1
                done.replaced |= name.replaced
    return seg


def _report(job: OutputJob, seg: Path | None, done: Written) -> None:
    """The DICOM SR of one scored file (DICOMs only), referencing `seg`, its SEG."""
    import pydicom

    if not job.dicom:
        done.sr_not_dicom += 1
        return
    if not job.sop_instance_uid:
        done.errors.append(f"{job.rel}: no SOPInstanceUID, so no DICOM SR")
        return
    with _guard(job, done) as target:  # the score stands; a failed SR is reported
        source = read_dataset(job.root / job.rel, stop_before_pixels=True)
        seg_header = pydicom.dcmread(seg, stop_before_pixels=True) if seg else None
        name = safe_output_path(job.sr_dir, job.rel, ".dcm", uid=job.sop_instance_uid)
        target.path = name.path
        write_dicom_sr(source, name.path, job.identity, job.score, job.positive, seg_header)
        done.srs += 1
        done.replaced |= name.replaced


def _ready() -> None:
    """Load what writing needs, so a writing process is warm before the first batch."""
    import highdicom  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401


def _writer_started() -> None:
    """A writing process's first call: it dies with the scorer, leaving no temporary file
    (`processes.helper_started`)."""
    helper_started(writes_files=True)


def output_pool(processes: int, threads: int = 2) -> Executor:
    """Where outputs are written: `processes` writing processes, or (0) `threads` threads of
    this process.

    Building a SEG or an SR is pure Python (pydicom, highdicom) and holds the GIL, so threads
    share one core between them; processes use as many cores as there are of them. They start
    as the decoding workers do (`processes.start_method`, `clean_fork`), all of them here, and
    get ready (`_ready`) while the model warms.
    """
    if processes <= 0:
        return ThreadPoolExecutor(threads, thread_name_prefix="outputs")
    context = multiprocessing.get_context(start_method())
    with clean_fork():
        pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_writer_started)
        for _ in range(processes):
            pool.submit(_ready)  # a forking pool starts every process at its first submit
    return pool


class OutputWriter:
    """Turns a scored batch into CSV rows, the positives' masks into files and, with an SR
    folder, every scored DICOM into a DICOM SR.

    Mask outputs (re-reading the source at full size, PNG encoding, building a DICOM SEG) take
    tens of milliseconds per positive and an SR as long again, far longer than a model takes
    per image, so they are written by a pool (`output_pool`: processes, or threads) while the
    model goes on; `rows` returns the futures, and a batch's rows go into the CSV only once
    its outputs exist (a row in the CSV means its files are there, so `--resume` never skips
    a positive whose mask is missing). A positive's SR is written after its SEG, which it
    references. Each future's result is what its file's outputs came to (`Written`), which
    the engine adds to its `OutputStats` when it commits the file's row.
    """

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        masks_dir: Path | None,
        seg_dir: Path | None,
        identity,
        threads: int = 2,
        *,
        sr_dir: Path | None = None,
        processes: int = 0,
    ) -> None:
        self.root, self.paths = root, paths
        self.masks_dir, self.seg_dir, self.identity = masks_dir, seg_dir, identity
        self.sr_dir = sr_dir
        wanted = masks_dir is not None or seg_dir is not None or sr_dir is not None
        self.pool = output_pool(processes, threads) if wanted else None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            # A run that stops (an error, a signal) drops the outputs not started; those being
            # written are finished, so no temporary file is left behind.
            self.pool.shutdown(wait=True, cancel_futures=exc[0] is not None)

    def rows(
        self, batch: Batch, prob, area, label, masks: dict[int, np.ndarray]
    ) -> tuple[list, list[Future]]:
        """One row per file of `batch`, and the futures of the outputs being written: PNG and
        SEG for each positive in `masks`, an SR for every scored file when asked."""
        rows, pending = [], []
        by_ok = {pos: j for j, pos in enumerate(batch.ok)}
        for pos, meta in enumerate(batch.meta):
            rel = self.paths[meta.index]
            sop = meta.sop_instance_uid or ""
            j = by_ok.get(pos)
            if j is None:
                rows.append([rel, sop, "", "", "", meta.error or "could not be decoded"])
                continue
            a = int(area[j])
            positive = bool(label[j])
            rows.append(
                [rel, sop, f"{float(prob[j]):.6f}", str(int(positive)), "" if a < 0 else str(a), ""]
            )
            mask = masks.get(j) if positive else None
            if self.pool is not None and (mask is not None or self.sr_dir is not None):
                job = OutputJob(
                    self.root, rel, meta.sop_instance_uid, meta.rows, meta.columns, meta.dicom,
                    float(prob[j]), positive, None if mask is None else np.asarray(mask),
                    self.masks_dir, self.seg_dir, self.sr_dir, self.identity,
                )  # fmt: skip
                pending.append(self.pool.submit(write_outputs, job))
        return rows, pending


def wait_outputs(outputs: Sequence[Future]) -> None:
    """Wait for a batch's output files. A destination that cannot be written (disk full, ...)
    stops the run here with its `ledger.WriteFailed`, and a writing process that died with
    `ledger.OutputsLost`, before the batch's rows are written (`--resume` writes both again)."""
    futures_wait(outputs)
    for o in outputs:
        err = o.exception()
        if err is None:
            continue
        if isinstance(err, ledger.WriteFailed):
            raise err
        raise ledger.OutputsLost(
            f"an output-writing process stopped ({describe(err)}); the rows of its batch were "
            "not written: run the same command with --resume to continue (--output-workers 0 "
            "writes the outputs in the scoring process)"
        ) from err
