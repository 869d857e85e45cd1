"""The artifact's sidecar as a typed contract: `ArtifactSpec`, validated once, read by everyone.

`ptxfast export` writes a sidecar only through `ArtifactSpec.from_record` (so it never writes
one a reader would refuse), and every reader (`runtime.load_predictor`, the Ray engine, `bench`,
`report`) gets an `ArtifactSpec` from `artifact.read_sidecar`: a frozen dataclass whose fields
are the ones loaders act on, typed and range-checked (a known backend and precision, a size of
at least 32, a batch range min ≤ opt ≤ max, thresholds in [0, 1], the format version). A field
that is missing, of the wrong type or out of range is one `ArtifactError` line naming the
sidecar, the field, what it holds and the fix (re-export it). The rest of the sidecar (parity,
sources, recipe, versions, selection) is informational: `spec["parity"]` reads it from the
record, which the spec keeps read-only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ptxfast import MODEL_NAMES
from ptxfast.errors import PtxfastError

FORMAT_VERSION = 1
INPUT_DTYPES = ("float32", "float16", "bfloat16")

# Every sidecar carries these keys (`ArtifactSpec.from_record` checks each one's type).
SIDECAR_FIELDS = (
    "format_version", "name", "kind", "file", "input", "batch", "thresholds", "backend", "path",
    "precision", "return_mask", "outputs", "device", "versions", "created", "sha256", "sources",
    "recipe", "parity",
)  # fmt: skip


class ArtifactError(PtxfastError):
    """An artifact that cannot be used; the message says which file and what to do."""


def _shown(value: Any) -> str:
    """A sidecar's value as an error shows it: repr (control characters escaped), shortened."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Reader:
    """Reads typed fields from one sidecar record; the first bad one is an ArtifactError."""

    def __init__(self, record: Mapping[str, Any], path: Path) -> None:
        self.record, self.path = record, path

    def fail(self, key: str, value: Any, expected: str) -> ArtifactError:
        what = "is missing" if value is _MISSING else f"is {_shown(value)}"
        return ArtifactError(
            f"sidecar {self.path}: {key!r} {what}, expected {expected}; re-export it "
            f"(ptxfast export {_flag(self.record)} {_shown_name(self.record)})"
        )

    def get(
        self,
        key: str,
        types: type | tuple[type, ...],
        expected: str,
        ok: Callable[[Any], bool] = lambda v: True,
        default: Any = None,
        required: bool = True,
    ) -> Any:
        """`record[key]` (a dotted key reads inside objects) when it has one of `types` and
        `ok(value)`; absent and not `required`: `default`."""
        value: Any = self.record
        for part in key.split("."):
            value = value.get(part, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is _MISSING and not required:
            return default
        good = isinstance(value, types) and not (
            isinstance(value, bool) and bool not in _tuple(types)
        )
        if not good or not ok(value):
            raise self.fail(key, value, expected)
        return value


_MISSING = object()


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _flag(record: Mapping[str, Any]) -> str:
    return "--cascade" if record.get("kind") == "cascade" else "--model"


def _shown_name(record: Mapping[str, Any]) -> str:
    name = record.get("name")
    return name if name in MODEL_NAMES else "NAME"


def _number(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and lo <= v <= hi


_REAL = (int, float)
_INT_OR_NONE = (int, type(None))


@dataclass(frozen=True)
class ArtifactSpec(Mapping):
    """An artifact's sidecar, validated (see the module docstring). `record` is the whole JSON
    object, read-only; `spec[key]` and `spec.get(key)` read it."""

    path: Path  # the sidecar file; the model file is `file` beside it
    name: str  # one of the eight models
    kind: str  # classifier | segmenter | cascade
    file: str  # the model file's name (no folder: it lives beside the sidecar)
    backend: str  # a registry backend that writes artifacts (backends.EXPORTABLE)
    build_path: str  # how it was made: trace, ts, dynamo, onnx:<exporter> (the sidecar's "path")
    precision: str  # the precision asked for: fp32 | fp16 | bf16
    size: int  # the input side S of N×1×S×S
    input_dtype: str  # float32 | float16 | bfloat16
    channels_last: bool
    batch: tuple[int, int, int]  # (min, opt, max) the artifact serves
    thresholds: Mapping[str, Any]  # label, pixel, min_area, score_k
    return_mask: bool  # the predictor hands the mask to callers
    mask_output: bool  # the graph returns a mask (ONNX graphs always do, for segmenters)
    tta: str
    operating_point: Mapping[str, Any] | None
    device: str  # the device type it was exported for
    sha256: str  # of the model file
    created: str  # ISO 8601 UTC; the newest artifact is the latest `created`
    runtime: Mapping[str, Any]  # ONNX Runtime / OpenVINO settings it was gated with
    fused_by_torch: str | None  # the torch whose private kernels a CPU-fused graph calls
    # the torch a graph found CPU-fused on loading is bound to: fused_by_torch, or in a sidecar
    # from before `cpu_fusion` its `versions.torch` (the torch that exported it)
    torch_if_fused: str | None
    format_version: int = FORMAT_VERSION
    record: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_record(cls, record: Any, path: str | Path) -> ArtifactSpec:
        """Validate a sidecar's JSON object (read from, or about to be written to, `path`)."""
        from ptxfast.inference.backends import BACKENDS, EXPORTABLE
        from ptxfast.inference.fused import TTAS
        from ptxfast.models import kind_of

        path = Path(path)
        if not isinstance(record, Mapping):
            raise ArtifactError(f"sidecar {path} is not a JSON object; re-export it")
        r = _Reader(record, path)
        version = record.get("format_version", _MISSING)
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ArtifactError(
                f"sidecar {path} has format version {_shown(None if version is _MISSING else version)}, "
                f"this ptxfast reads {FORMAT_VERSION}; re-export it with this version"
            )
        name = r.get("name", str, f"one of {', '.join(MODEL_NAMES)}", lambda v: v in MODEL_NAMES)
        kind = r.get(
            "kind", str, f"{kind_of(name)!r} (the kind of {name})", lambda v: v == kind_of(name)
        )
        backend = r.get(
            "backend", str, f"one of {', '.join(EXPORTABLE)}", lambda v: v in EXPORTABLE
        )
        precisions = BACKENDS[backend].precisions
        for key in ("input", "batch", "precision"):
            r.get(key, dict, "an object")
        lo, opt, hi = (
            r.get(f"batch.{k}", int, "an integer from 1, min <= opt <= max", lambda v: v >= 1)
            for k in ("min", "opt", "max")
        )
        if not lo <= opt <= hi:
            raise r.fail("batch", dict(record["batch"]), "min <= opt <= max")
        op = r.get("operating_point", (dict, type(None)), "an object or null", required=False)
        if op is not None:
            r.get("operating_point.threshold", _REAL, "a number in [0, 1]", _number(0, 1))
            r.get("operating_point.chosen", str, "a text saying how it was chosen")
            r.get("operating_point.temperature", (*_REAL, type(None)), "a positive number or null",
                  lambda v: v is None or _number(1e-6, 1e6)(v), required=False)  # fmt: skip
        for key in ("versions", "sources", "recipe", "parity"):
            r.get(key, dict, "an object")
        r.get("outputs", list, "a list of the graph's outputs")
        fusion = r.get("cpu_fusion", (dict, type(None)), "an object or null", required=False)
        outputs = r.get("onnx.outputs", list, "a list of output names", required=False, default=())
        return_mask = r.get("return_mask", bool, "true or false")
        return cls(
            path=path,
            name=name,
            kind=kind,
            file=r.get("file", str, "the model file's name, beside the sidecar",
                       lambda v: bool(v) and v == Path(v).name and v not in (".", "..")),
            backend=backend,
            build_path=r.get("path", str, "how the artifact was made (trace, ts, onnx:...)"),
            precision=r.get("precision.requested", str, f"one of {', '.join(precisions)} for {backend}",
                            lambda v: v in precisions),
            size=r.get("input.size", int, "an integer of at least 32", lambda v: v >= 32),
            input_dtype=r.get("input.dtype", str, f"one of {', '.join(INPUT_DTYPES)}",
                              lambda v: v in INPUT_DTYPES),
            channels_last=r.get("input.channels_last", bool, "true or false", required=False,
                                default=True),
            batch=(lo, opt, hi),
            thresholds=_thresholds(r),
            return_mask=return_mask,
            mask_output=return_mask or "mask" in outputs,
            tta=r.get("tta", str, f"one of {', '.join(TTAS)}", lambda v: v in TTAS, required=False,
                      default="none"),
            operating_point=MappingProxyType(op) if op is not None else None,
            device=r.get("device", str, "a device type (cpu, cuda)"),
            sha256=r.get("sha256", str, "64 hex digits", lambda v: re.fullmatch(r"[0-9a-f]{64}", v)),
            created=r.get("created", str, "an ISO 8601 time"),
            runtime=MappingProxyType(r.get("runtime", (dict, type(None)), "an object or null",
                                           required=False) or {}),
            fused_by_torch=_fused_by(r, fusion),
            torch_if_fused=_torch_if_fused(r, fusion),
            format_version=version,
            record=MappingProxyType(dict(record)),
        )  # fmt: skip

    # Mapping over the whole record (the informational fields: parity, sources, recipe, ...).
    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)

    @property
    def model_path(self) -> Path:
        """The model file the sidecar describes (its `file`, beside the sidecar)."""
        return self.path.parent / self.file

    @property
    def export_option(self) -> str:
        """The `ptxfast export` option that names this artifact's model: --cascade or --model."""
        return _flag(self.record)

    @property
    def export_command(self) -> str:
        """The command that remakes this artifact (for error messages)."""
        return (
            f"ptxfast export {self.export_option} {self.name} --backend {self.backend} "
            f"--precision {self.precision}"
        )

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint the artifact was exported from, as recorded (it may be gone)."""
        path = ((self.get("sources") or {}).get("checkpoint") or {}).get("path")
        return Path(path) if isinstance(path, str) and path else None


def _thresholds(r: _Reader) -> Mapping[str, Any]:
    r.get("thresholds", dict, "an object with label, pixel, min_area, score_k")
    out = {
        "label": r.get("thresholds.label", _REAL, "a number in [0, 1]", _number(0, 1)),
        "pixel": r.get("thresholds.pixel", (*_REAL, type(None)), "a number in [0, 1] or null",
                       lambda v: v is None or _number(0, 1)(v), required=False),
        "min_area": r.get("thresholds.min_area", _INT_OR_NONE, "a count of pixels or null",
                          lambda v: v is None or v >= 0, required=False),
        "score_k": r.get("thresholds.score_k", _INT_OR_NONE, "a count of pixels or null",
                         lambda v: v is None or v >= 1, required=False),
    }  # fmt: skip
    return MappingProxyType({**r.record["thresholds"], **out})


def _fused_by(r: _Reader, fusion: Mapping[str, Any] | None) -> str | None:
    """The torch a CPU-fused graph is bound to, as its `cpu_fusion.torch` records it (None for
    a graph without the rewrite, and in sidecars from before that field)."""
    if fusion is not None:
        return r.get("cpu_fusion.torch", (str, type(None)), "a torch version or null",
                     required=False)  # fmt: skip
    return None


def _torch_if_fused(r: _Reader, fusion: Mapping[str, Any] | None) -> str | None:
    """The torch to hold a graph that turns out CPU-fused to: `_fused_by`'s, or, in a sidecar
    from before `cpu_fusion` (which names only `versions.torch`), the torch that exported it."""
    if "cpu_fusion" in r.record:
        return _fused_by(r, fusion)
    return r.get("versions.torch", (str, type(None)), "a torch version or null", required=False)
