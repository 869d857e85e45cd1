"""What scoring writes besides preds.csv, and when: PNG masks and overlays, DICOM SEG and SR
(`dicom_out`), safe output names, and `OutputWriter`, which turns scored batches into rows and
writes their outputs on threads.

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
import os
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ptxfast.data.dicom import load_image, read_dataset
from ptxfast.data.resize import resize
from ptxfast.files import atomic_write
from ptxfast.score import ledger
from ptxfast.score.decode import Batch, Meta, one_line
from ptxfast.score.dicom_out import ModelIdentity, write_dicom_seg, write_dicom_sr

if TYPE_CHECKING:
    from ptxfast.score.summary import ScoreSummary

__all__ = [
    "MASK_SUFFIXES", "ModelIdentity", "OutputName", "OutputWriter", "UnsafeOutputPath",
    "is_dicom_uid", "mask_outputs", "overlay_rgb", "safe_output_path", "source_mask",
    "write_dicom_seg", "write_dicom_sr", "write_png_masks",
]  # fmt: skip

_OUTLINE_RGB = (255, 40, 40)
# DICOM UI values (PS3.5 9.1): components of digits separated by dots, at most 64 characters.
# Leading zeros (not conformant, seen in the wild) are harmless in a file name and kept.
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_MAX = 64
_NAME_MAX = 255  # bytes in one path component on common Linux file systems
_HASH_CHARS = 32  # of the sha256 hex digest naming an output whose own name is unusable


class UnsafeOutputPath(ValueError):
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
    from PIL import Image

    mask_path.parent.mkdir(parents=True, exist_ok=True)
    _save_png(Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), mask_path)
    _save_png(Image.fromarray(overlay_rgb(image, mask), mode="RGB"), overlay_path)


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


@dataclass
class _Target:
    """The output file being written, named in a write failure."""

    path: Path | None = None


class OutputWriter:
    """Turns a scored batch into CSV rows, the positives' masks into files and, with an SR
    folder, every scored DICOM into a DICOM SR.

    Mask outputs (re-reading the source at full size, PNG encoding, building a DICOM SEG) take
    tens of milliseconds per positive, longer than a GPU takes for a batch, so they are
    written by a small pool of threads while the model goes on; `rows` returns the futures,
    and a batch's rows go into the CSV only once its outputs exist (a row in the CSV means
    its files are there, so `--resume` never skips a positive whose mask is missing). A
    positive's SR is written after its SEG, which it references.
    """

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        summary: ScoreSummary,
        masks_dir: Path | None,
        seg_dir: Path | None,
        identity,
        threads: int = 2,
        *,
        sr_dir: Path | None = None,
    ) -> None:
        self.root, self.paths, self.s = root, paths, summary
        self.masks_dir, self.seg_dir, self.identity = masks_dir, seg_dir, identity
        self.sr_dir = sr_dir
        self.lock = threading.Lock()  # the summary's output counters
        self.replaced: set[str] = set()  # inputs with a hash-named output
        wanted = masks_dir is not None or seg_dir is not None or sr_dir is not None
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="outputs") if wanted else None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

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
                score = float(prob[j])
                pending.append(self.pool.submit(self._scored, rel, meta, score, positive, mask))
        return rows, pending

    def _scored(
        self, rel: str, meta: Meta, score: float, positive: bool, mask: np.ndarray | None
    ) -> None:
        """A scored file's outputs: its masks and SEG (positives), then its SR."""
        seg = self._outputs(rel, meta, mask) if mask is not None else None
        if self.sr_dir is not None:
            self._report(rel, meta, score, positive, seg)

    def _report(self, rel: str, meta: Meta, score: float, positive: bool, seg: Path | None) -> None:
        """Write the DICOM SR of one scored file (DICOMs only), referencing `seg`, its SEG."""
        import pydicom

        if not meta.dicom:
            with self.lock:
                self.s.sr_not_dicom += 1
            return
        if not meta.sop_instance_uid:
            self._error(f"{rel}: no SOPInstanceUID, so no DICOM SR")
            return
        with self._guard(rel) as target:  # the score stands; a failed SR is reported
            source = read_dataset(self.root / rel, stop_before_pixels=True)
            seg_header = pydicom.dcmread(seg, stop_before_pixels=True) if seg else None
            name = safe_output_path(self.sr_dir, rel, ".dcm", uid=meta.sop_instance_uid)
            target.path = name.path
            write_dicom_sr(source, name.path, self.identity, score, positive, seg_header)
            with self.lock:
                self.s.srs_written += 1
            if name.replaced:
                self._replaced(rel)

    def _replaced(self, rel: str) -> None:
        with self.lock:
            self.replaced.add(rel)
            self.s.names_replaced = len(self.replaced)

    @contextlib.contextmanager
    def _guard(self, rel: str) -> Iterator[_Target]:
        """Problems of the file itself are reported beside its row; a destination that cannot
        be written (the body sets `target.path` to what it writes) raises `ledger.WriteFailed`,
        which keeps the batch's rows out of the CSV (so `--resume` writes row and outputs
        again)."""
        target = _Target()
        path = self.root / rel
        try:
            yield target
        except OSError as err:
            if ledger.is_write_error(err):
                raise ledger.write_failed(target.path or err.filename or self.root, err) from None
            self._error(f"{rel}: {one_line(err, path)}")
        except Exception as err:
            self._error(f"{rel}: {one_line(err, path)}")

    def _outputs(self, rel: str, meta: Meta, prob: np.ndarray) -> Path | None:
        """Write one positive's masks and SEG; returns the SEG's path when one was written."""
        seg = None
        with self._guard(rel) as target:  # the score stands; a missing mask is reported
            mask = source_mask(prob, meta.rows, meta.columns, self.identity.pixel_threshold)
            replaced = False
            if self.masks_dir is not None:
                replaced = self._png(rel, mask, target)
            if self.seg_dir is not None:
                if not meta.dicom:
                    with self.lock:
                        self.s.seg_not_dicom += 1
                elif not meta.sop_instance_uid:
                    self._error(f"{rel}: no SOPInstanceUID, so no DICOM SEG")
                else:
                    source = read_dataset(self.root / rel, stop_before_pixels=True)
                    name = safe_output_path(self.seg_dir, rel, ".dcm", uid=meta.sop_instance_uid)
                    replaced = replaced or name.replaced
                    target.path = name.path
                    seg = write_dicom_seg(source, mask, name.path, self.identity)
                    with self.lock:
                        self.s.segs_written += 1
            if replaced:
                self._replaced(rel)
        return seg

    def _png(self, rel: str, mask: np.ndarray, target: _Target) -> bool:
        """The mask and overlay PNGs of one positive; True when their names were replaced."""
        image, _ = load_image(self.root / rel)
        if image.shape != mask.shape:  # a reader that disagrees with its header
            image = resize(image, mask.shape)
        names = mask_outputs(self.masks_dir, rel)
        target.path = names[0].path
        write_png_masks(mask, image, names[0].path, names[1].path)
        with self.lock:
            self.s.masks_written += 1
        return any(n.replaced for n in names)

    def _error(self, message: str) -> None:
        with self.lock:
            self.s.output_errors.append(message)


def wait_outputs(outputs: Sequence[Future]) -> None:
    """Wait for a batch's output files; a destination that cannot be written (disk full, ...)
    stops the run here with its `ledger.WriteFailed`, before the batch's rows are written."""
    futures_wait(outputs)
    for o in outputs:
        if isinstance(o.exception(), ledger.WriteFailed):
            raise o.exception()
