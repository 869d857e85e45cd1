"""What an image reader returns besides the pixels, and the one exception it raises.

Every unreadable input raises `ImageReadError`, whose message names the file and the reason
(`read_error`); a file the eligibility rule refuses raises its subclass `NotEligible`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ptxfast.errors import PtxfastError, first_line

__all__ = ["ImageInfo", "ImageReadError", "NotEligible", "describe", "one_line", "read_error"]


class ImageReadError(PtxfastError):
    """An input that cannot be read as an image; the message names the file and the reason."""


class NotEligible(ImageReadError):
    """An image the eligibility rule refuses (not a chest radiograph), found from its header
    before any pixel is decoded; `reason` is the rule's phrase ("Modality CT")."""

    def __init__(self, path: Path, reason: str) -> None:
        from ptxfast.data.eligibility import not_eligible_message

        super().__init__(f"{path}: {not_eligible_message(reason)}")
        self.reason = reason


@dataclass(kw_only=True)
class ImageInfo:
    """What a reader learned about a file besides its pixels (DICOM identifiers and geometry).

    `rows` and `columns` are the stored size, before any resize. For PNG/JPEG the DICOM
    fields are None, `photometric` is "MONOCHROME2" or "RGB" and `n_frames` is None.
    """

    path: Path
    rows: int
    columns: int
    photometric: str | None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    transfer_syntax_uid: str | None = None
    modality: str | None = None
    n_frames: int | None = None
    # Eligible on no evidence (no header, no Modality): the eligibility rule's note, else None.
    eligibility_note: str | None = None


def read_error(path: str | os.PathLike, reason: str) -> ImageReadError:
    """The error of `path`: "<path>: <reason>"."""
    return ImageReadError(f"{os.fspath(path)}: {reason}")


def describe(exc: BaseException) -> str:
    """An exception as "Type: first line of its message", for error messages."""
    return first_line(exc, typed=True)


def one_line(err: BaseException, path: str | os.PathLike) -> str:
    """`err` as the one-line error of `path`'s row: without the path the row already names,
    with its type unless it is an `ImageReadError` (whose message is the reason)."""
    text = " ".join(str(err).split()) or type(err).__name__
    prefix = f"{os.fspath(path)}: "
    if text.startswith(prefix):  # the row already names the file
        text = text[len(prefix) :]
    if not isinstance(err, ImageReadError):
        text = f"{type(err).__name__}: {text}"
    return text
