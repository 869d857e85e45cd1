"""The one base of every error ptxfast raises for its user, and how such an error is shown.

Each package keeps its own error class (`ExportError`, `ArtifactError`, `ScoreError`, ...) so a
caller can tell them apart, and every one of them is a `PtxfastError`: its message is one line
that says what is wrong and what to do, and the command line prints it as such (exit status 1)
without re-raising it under another name.
"""

from __future__ import annotations


class PtxfastError(ValueError):
    """A user-facing error: one line that says what is wrong and what to do.

    A ValueError, as every ptxfast error was before this base existed, so callers catching
    ValueError still do."""


def first_line(err: BaseException, typed: bool = False) -> str:
    """The first line of an error's message (its type's name when it has none): how a
    third-party error is quoted inside one of ptxfast's one-line messages. `typed`: as
    "Type: first line", what a failed row or an error column records."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    if not first:
        return type(err).__name__
    return f"{type(err).__name__}: {first}" if typed else first
