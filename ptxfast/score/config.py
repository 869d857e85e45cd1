"""What a scoring run is asked to do: `ScoreConfig`, its checks, and `ScoreError`.

Every engine reads the same dataclass; `check()` refuses what cannot run before anything is
loaded, decoded or written, with one line that names the option and the fix.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptxfast.data.eligibility import DEFAULT_RULE, RULES
from ptxfast.errors import PtxfastError
from ptxfast.score import folders

__all__ = ["ScoreConfig", "ScoreError"]


class ScoreError(PtxfastError):
    """A scoring run that cannot start as asked; the message says what to do."""


def _path(value: str | os.PathLike | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass
class ScoreConfig:
    """One scoring request (what `ptxfast score` options fill); see `ptxfast.score`."""

    # The folder of DICOM/PNG/JPEG files, walked recursively; or an http(s) DICOMweb root,
    # which becomes `pacs.url` (root is then the folder fetched files wait in).
    root: Path
    out: Path  # the predictions CSV (the ledger)
    # An artifact (model file or sidecar), None for the newest under `exports_dir`, or a
    # loaded `runtime.Predictor` (local engine only).
    model: str | os.PathLike | Any = None
    device: str = "auto"  # auto, cuda, cuda:N or cpu
    batch_size: int = 16
    # Decoding processes; None: on a CPU sized from a measured decode against the model's compute
    # (score.sizing), all cores but one (at most 16) on CUDA; 0 decodes in this process (no
    # protection against a decoder that kills its process).
    workers: int | None = None
    resume: bool = False  # keep the rows already in `out` and score the files they lack
    overwrite: bool = False  # start `out` again
    shard: tuple[int, int] = (1, 1)  # (k, n): the k-th of every n sorted files
    masks_dir: Path | None = None  # PNG mask + overlay per positive (needs a mask output)
    seg_dir: Path | None = None  # DICOM SEG per positive DICOM (needs a mask output)
    sr_dir: Path | None = None  # DICOM SR per scored DICOM (any artifact)
    # Processes writing masks, SEG and SR (local engine); None: `pipeline.default_output_workers`;
    # 0 writes them on two threads of the scoring process.
    output_workers: int | None = None
    summary_json: Path | None = None  # the summary as JSON
    exports_dir: Path = Path("exports")  # where `model=None` looks for the newest artifact
    # CPU: torch threads per model lane, and batches the model runs at once; None: one lane
    # per core with one thread each (`pipeline.parallelism`).
    threads: int | None = None
    lanes: int | None = None
    prefetch_factor: int = 2  # batches each decoding process prepares ahead
    model_only_iters: int = 5  # batches timed for the model-only throughput (0 skips it)
    decode_timeout: float = 600.0  # seconds a batch may take to decode before it is an error
    progress: Callable[[int, int], None] | None = None  # called with (rows done, rows to do)
    engine: str = "local"  # "local" (this machine) or "ray" (a Ray cluster)
    ray: Any = None  # engine_ray.RayOptions for engine="ray" (None: its defaults)
    eligibility: str = DEFAULT_RULE  # "default", "strict" or "off" (ptxfast.data.eligibility)
    # pacs.PacsOptions: the DICOMweb source and --send targets; None: a folder, nothing sent.
    pacs: Any = None
    # Where compressed frames are decoded: "cpu" (the decoding workers), "gpu" (nvImageCodec in
    # the scoring process, ptxfast.score.gpu_decode) or "auto" (gpu where it can run).
    decoder: str = "auto"

    def __post_init__(self) -> None:
        from ptxfast.score import pacs

        self.out = Path(self.out)
        if pacs.is_url(self.root):
            self.pacs = dataclasses.replace(self.pacs or pacs.PacsOptions(), url=self.root)
            from ptxfast.score.dicomweb import spool_dir

            self.root = spool_dir(self.out)
        self.root = Path(self.root)
        self.masks_dir, self.seg_dir = _path(self.masks_dir), _path(self.seg_dir)
        self.sr_dir, self.summary_json = _path(self.sr_dir), _path(self.summary_json)
        self.exports_dir = Path(self.exports_dir)
        self.shard = (int(self.shard[0]), int(self.shard[1]))

    @property
    def wants_masks(self) -> bool:
        """Mask outputs (PNG or SEG) are asked for, so the artifact needs its mask output."""
        return self.masks_dir is not None or self.seg_dir is not None

    @property
    def url(self) -> str | None:
        """The DICOMweb root scored, None for a folder."""
        return self.pacs.url if self.pacs is not None else None

    @property
    def source(self) -> str:
        """What is scored, as printed: the folder, or the URL without credentials."""
        from ptxfast.score.pacs import redact

        return redact(self.url) if self.url else str(self.root)

    def check(self) -> None:
        """Refuse counts, names and folders that cannot work, before any work starts."""
        if self.pacs is not None:
            self._check_pacs()
        if not self.url and not self.root.is_dir():
            raise ScoreError(
                f"{self.root} is not a folder; give the folder of DICOM/PNG/JPEG files"
            )
        if self.batch_size < 1:
            raise ScoreError("--batch-size must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise ScoreError("--workers must be 0 (decode in this process) or more")
        if self.output_workers is not None and self.output_workers < 0:
            raise ScoreError("--output-workers must be 0 (threads of this process) or more")
        for value, option in ((self.lanes, "--lanes"), (self.threads, "--threads")):
            if value is not None and value < 1:
                raise ScoreError(f"{option} must be at least 1")
        if self.eligibility not in RULES:
            raise ScoreError(
                f"--eligibility {self.eligibility!r}: choose one of {', '.join(RULES)}"
            )
        k, n = self.shard
        if not 1 <= k <= n:
            raise ScoreError(f"shard {k}/{n}: K must be between 1 and N")
        if self.engine not in ("local", "ray"):
            raise ScoreError(f"--engine {self.engine!r}: choose local or ray")
        if self.decoder not in ("auto", "cpu", "gpu"):
            raise ScoreError(f"--decoder {self.decoder!r}: choose auto, cpu or gpu")
        if self.decoder == "gpu" and self.engine != "local":
            raise ScoreError("--decoder gpu runs with --engine local; use --decoder cpu")
        if self.decoder == "gpu":
            from ptxfast.score.gpu_decode import require

            require(self.device)

    def _check_pacs(self) -> None:
        """A DICOMweb source or --send targets: the libraries, the options, the outputs sent."""
        from ptxfast.score import pacs

        pacs.require()
        self.pacs.check()
        if self.url and self.engine != "local":
            raise ScoreError(
                "--engine ray scores folders; score a DICOMweb server with --engine local"
            )
        if self.pacs.send and not (self.sr_dir or self.seg_dir):
            raise ScoreError(
                "--send sends the DICOM SR and SEG files the run writes: add --dicom-sr DIR "
                "and/or --dicom-seg DIR"
            )

    def check_folders(self) -> None:
        """Create each output folder, write a probe file in it (so a bad path fails first) and
        mark it as ptxfast's (`folders`); an unmarked folder inside `root` that may hold
        inputs is refused."""
        outputs = [(self.masks_dir, "--masks"), (self.seg_dir, "--dicom-seg")]
        outputs.append((self.sr_dir, "--dicom-sr"))
        root = self.root.resolve()
        for folder, option in outputs:
            if folder is None:
                continue
            if folder.resolve().is_relative_to(root) and folders.holds_inputs(folder):
                raise ScoreError(
                    f"{option} {folder} is inside the input folder {self.root} and holds files "
                    "ptxfast did not write; give a new or empty folder (or one outside "
                    f"{self.root}) so outputs are never scored as inputs"
                )
            check_writable(folder, option)
            try:
                folders.mark_output_folder(folder)
            except OSError as err:
                raise ScoreError(f"cannot write {option} {folder}: {err.strerror or err}") from None
        if self.summary_json is not None:
            check_writable(self.summary_json.parent, "--json")

    def own_outputs(self) -> list[Path]:
        """The run's own files and folders, left out of the inputs when they sit in `root`
        (the CSV and its lock under the name given and the file it resolves to)."""
        real = Path(os.path.realpath(self.out))
        found = [self.out, real, real.with_name(real.name + ".lock")]
        found += [self.masks_dir, self.seg_dir, self.sr_dir, self.summary_json]
        return [p for p in found if p is not None]


def check_writable(folder: Path, option: str) -> None:
    """Create `folder` and write a probe file in it, so a bad path fails before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ptxfast-probe-"):
            pass
    except OSError as err:
        raise ScoreError(f"cannot write {option} {folder}: {err.strerror or err}") from None


def check_masks(kind: str, return_mask: bool, what: str, export_command: str | None) -> None:
    """Refuse mask outputs from an artifact that has no mask, naming the re-export."""
    if kind == "classifier":
        raise ScoreError(
            f"{what} is a classifier and has no mask; for --masks/--dicom-seg score with a "
            "segmenter or cascade artifact exported with --return-mask"
        )
    if not return_mask:
        fix = f"`{export_command} --return-mask`" if export_command else "--return-mask"
        raise ScoreError(
            f"{what} was exported without its mask output; --masks/--dicom-seg need one: "
            f"re-export it with {fix}"
        )
