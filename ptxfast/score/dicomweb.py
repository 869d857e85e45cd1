"""Scoring straight from a DICOMweb server: QIDO-RS finds the instances, WADO-RS fetches them
inside the decoding workers, and a spool folder holds each fetched file only until its row is
in the CSV.

Finding. `--study UID` names studies; without it the studies whose ModalitiesInStudy include
CR, DX or DR (every study with `--eligibility off`), from `--since YYYYMMDD` on. One query per
study lists its instances with their series' Modality; those of a modality the eligibility
rule accepts are inputs (results such as SR and SEG never are, so what a run sends back into
a study is not scored by the next; the others are counted as skipped), each keyed by the path
`studies/<Study>/series/<Series>/instances/<SOP>`: sorting, `--shard`, `--resume`, the lock
and the report work on those keys as on a folder's relative paths. UIDs that are not DICOM
UIDs are skipped (they would name files).

Fetching. `FetchingFiles` is the decoding workers' Dataset: each worker fetches its batch's
instances with WADO-RS in parallel (`PacsOptions.fetch_threads` requests at once), in their
stored transfer syntax, into `<out>.fetching/<key>`, and decodes them as files from a folder.
An instance that still cannot be fetched after the retries (with backoff) is an error row.
Memory and disk stay bounded by the pipeline's own window: a fetched file is deleted as soon
as its row is in the CSV (its SEG and SR, which read its header, are written before that),
so only the batches being decoded, scored or written exist at once; the folder itself is
emptied when a run starts and removed when it ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ptxfast.data.eligibility import DEFAULT_RULE, RADIOGRAPH_MODALITIES
from ptxfast.data.eligibility import check as eligible
from ptxfast.files import atomic_write
from ptxfast.score.decode import Files, HandOver, Meta
from ptxfast.score.inputs import Inputs
from ptxfast.score.pacs import (
    PacsError,
    PacsOptions,
    describe_failure,
    redact,
    retrying,
    web_client,
)

__all__ = [
    "RESULT_MODALITIES", "FetchingFiles", "Spool", "find_instances", "instance_path", "probe",
    "spool_dir",
]  # fmt: skip

SPOOL_SUFFIX = ".fetching"
# Series that hold results, not images: never inputs, whatever the eligibility rule.
RESULT_MODALITIES = frozenset({"SR", "SEG", "PR", "KO", "DOC", "RWV", "REG"})
_PAGE = 1000  # QIDO-RS results asked for per request
# DICOM JSON tags read from QIDO-RS results.
_STUDY, _SERIES, _SOP, _MODALITY = "0020000D", "0020000E", "00080018", "00080060"

_CLIENTS: dict[tuple[int, str], Any] = {}  # one client per process and server


def spool_dir(out: Path) -> Path:
    """Where a run over a DICOMweb server keeps the files being scored: `<out>.fetching`."""
    return out.with_name(out.name + SPOOL_SUFFIX)


def instance_path(study: str, series: str, sop: str) -> str:
    """The stable key (and spool path) of one instance."""
    return f"studies/{study}/series/{series}/instances/{sop}"


def _uids(rel: str) -> tuple[str, str, str]:
    parts = rel.split("/")
    return parts[1], parts[3], parts[5]


def client(options: PacsOptions, fresh: bool = False):
    """This process's DICOMweb client for `options.url` (a forked worker makes its own: a
    session's connections must not be shared across processes); `fresh`: a new one, with
    the credentials the environment and netrc hold now (a run starts so)."""
    key = (os.getpid(), options.url)
    if fresh or key not in _CLIENTS:
        _CLIENTS[key] = web_client(options.url, options)
    return _CLIENTS[key]


def _value(item: dict, tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def _search(options: PacsOptions, search, **query) -> list[dict]:
    """Every result of one QIDO-RS query, page by page (`limit`/`offset`), each request with
    retries. A server that ignores `offset` (its page repeats) ends the paging."""
    found: list[dict] = []
    seen: set[str] = set()
    while True:
        page = retrying(
            lambda: search(limit=_PAGE, offset=len(found), **query),
            options.attempts,
            options.backoff,
        )
        fresh = [item for item in page if repr(item) not in seen]
        if not fresh:
            return found
        seen.update(repr(item) for item in fresh)
        found.extend(fresh)


def probe(options: PacsOptions) -> None:
    """One QIDO-RS request, so an unreachable or refusing server stops the run in one line
    before the model is loaded."""
    web = client(options, fresh=True)
    try:
        retrying(lambda: web.search_for_studies(limit=1), options.attempts, options.backoff)
    except Exception as err:
        why = describe_failure(err)
        fix = "" if "credentials" in why else (
            "; check the URL (the service root, e.g. http://host:8042/dicom-web) and that "
            "the server runs"
        )  # fmt: skip
        raise PacsError(
            f"cannot query the DICOMweb server {redact(options.url)}: {why}{fix}"
        ) from None


def _studies(options: PacsOptions, rule: str) -> list[str]:
    """The StudyInstanceUIDs to score: those asked for, else those QIDO-RS finds."""
    if options.studies:
        return list(dict.fromkeys(options.studies))
    web = client(options)
    date = {"StudyDate": f"{options.since}-"} if options.since else {}
    modalities = sorted(RADIOGRAPH_MODALITIES) if rule != "off" else [None]
    found: dict[str, None] = {}
    for modality in modalities:  # one value per query: lists are not matched everywhere
        filters = {**date, **({"ModalitiesInStudy": modality} if modality else {})}
        for study in _search(options, web.search_for_studies, search_filters=filters):
            uid = _value(study, _STUDY)
            if uid:
                found[uid] = None
    return list(found)


def _wanted(modality: str | None, rule: str) -> bool:
    """A series worth listing: not a result, and a modality the rule accepts (its views and
    body parts are checked per instance, from the header the decode reads)."""
    modality = (modality or "").upper() or None
    if modality in RESULT_MODALITIES:
        return False
    if rule == "strict":
        return modality in RADIOGRAPH_MODALITIES
    return eligible(modality, rule=rule).eligible


def find_instances(
    options: PacsOptions, shard: tuple[int, int] = (1, 1), rule: str = DEFAULT_RULE
) -> Inputs:
    """The instances of shard `shard` on the server, as sorted keys (`instance_path`); those of
    series passed over (results, other modalities) are `skipped`. One QIDO-RS query (and its
    pages) per study: instance results carry their series' UID and Modality.
    """
    from ptxfast.score.writer import is_dicom_uid

    web = client(options)
    keys, skipped = set(), set()
    try:
        for study in _studies(options, rule):
            for inst in _search(
                options, web.search_for_instances, study_instance_uid=study,
                fields=["Modality", "SeriesInstanceUID"],
            ):  # fmt: skip
                series, sop = _value(inst, _SERIES), _value(inst, _SOP)
                if not (series and sop and is_dicom_uid(series) and is_dicom_uid(sop)):
                    continue  # it would name a file; nothing to fetch it by anyway
                wanted = _wanted(_value(inst, _MODALITY), rule)
                (keys if wanted else skipped).add(instance_path(study, series, sop))
    except Exception as err:
        raise PacsError(
            f"cannot list the instances of {redact(options.url)}: {describe_failure(err)}; "
            "run the same command again (with --resume once rows exist)"
        ) from None
    ordered = sorted(keys)
    k, n = shard
    return Inputs(ordered[k - 1 :: n], sorted(skipped), len(ordered))


# ------------------------------------------------------------------------ fetching


class FetchingFiles(Files):
    """`decode.Files` over a DICOMweb server: each instance is fetched (WADO-RS, the batch's
    instances in parallel) into the spool folder `root`, then decoded as a file."""

    def __init__(
        self,
        root: Path,
        paths: Sequence[str],
        size: int,
        state,
        eligibility: str = DEFAULT_RULE,
        hand_over: HandOver | None = None,
        *,
        options: PacsOptions,
    ) -> None:
        super().__init__(root, paths, size, state, eligibility, hand_over)
        self.options = options

    def _fetch(self, i: int) -> str | None:
        """Fetch instance i into the spool; None when it is there, else the row's error."""
        rel = self.paths[i]
        web = client(self.options)
        try:
            ds = retrying(
                lambda: web.retrieve_instance(*_uids(rel)),
                self.options.attempts,
                self.options.backoff,
            )
            self._store(ds, self.root / rel)
        except Exception as err:
            return (
                f"could not fetch from {redact(self.options.url)} "
                f"({self.options.attempts} tries): {describe_failure(err)}"
            )
        return None

    @staticmethod
    def _store(ds, path: Path) -> None:
        """Write a fetched instance as stored (its transfer syntax), through a temporary name."""
        atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=False))

    def _failed(self, i: int, error: str) -> tuple[None, Meta, float]:
        self.state[i] = -1
        return None, Meta(index=i, sop_instance_uid=_uids(self.paths[i])[2], error=error), 0.0

    def __getitem__(self, i: int):
        error = self._fetch(i)
        return self._failed(i, error) if error else super().__getitem__(i)

    def __getitems__(self, indices: list[int]) -> list:
        """A batch: its instances fetched side by side, each decoded as soon as it is here."""
        threads = max(1, min(self.options.fetch_threads, len(indices)))
        with ThreadPoolExecutor(threads, thread_name_prefix="wado") as pool:
            errors = pool.map(self._fetch, indices)
            return [
                self._failed(i, error) if error else Files.__getitem__(self, i)
                for i, error in zip(indices, errors, strict=True)
            ]


class Spool:
    """The folder the fetched files wait in (`spool_dir`): emptied at the start (a run killed
    before left it), each file deleted once its row is written (`release`, a ledger
    listener), removed at the end. Its folders stay until then: removing one emptied by a
    release would race with a fetch making it again to write into it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)  # patients' images: ours alone

    def release(self, rows: Iterable[Sequence[str]]) -> None:
        """Delete the fetched files of rows just written (their folders stay until `remove`)."""
        for row in rows:
            with contextlib.suppress(OSError):
                (self.root / row[0]).unlink()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
