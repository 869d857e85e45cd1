"""Decoding on the GPU: workers hand over compressed frames, the scoring process decodes them.

On a GPU host the model outruns the CPU decoders by an order of magnitude (an H200 scores
500-650 images/s; 15 decoders of a 16-core host feed it 45-160 from a JPEG-LS, JPEG lossless
or JPEG 2000 archive). With `--decoder gpu` (or `auto` where a CUDA device and nvImageCodec,
the extra `ptxfast[gpu-decode]`, are present):

- the decoding workers parse and check each header as before (eligibility, size limits, the
  codec's own header) and hand a windowed grayscale frame in one of `GPU_SYNTAXES` over still
  compressed (`ptxfast.data.dicom.load_image_or_frame`); anything else they decode themselves;
- `GpuFrames.finish`, in the scoring process, decodes a batch's frames in one call of the
  `FrameDecoder` (`NvImageCodec`: `nvimgcodec.Decoder().decode(list of code streams)`), applies
  the window and the area resize on the GPU (`model_input`, the CPU path's rules) and hands the
  batch to the model without a copy to the host;
- the first frame of every (transfer syntax, bits stored) pair in a run is also decoded on the
  CPU and compared; a mismatch turns the GPU off for that pair with one warning (nvJPEG before
  13.0.2 decodes 9-15-bit lossless JPEG to zeros without an error). Those frames, and any the
  GPU will not decode, are decoded on the CPU in the scoring process.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from pydicom import uid
from pydicom.uid import UID

from ptxfast.data.dicom import EncodedFrame, load_image
from ptxfast.data.dicom import codecs as cpu_codecs
from ptxfast.data.dicom.info import describe
from ptxfast.data.dicom.limits import HTJ2K, J2K, JPEG_DCT, JPEG_LOSSLESS
from ptxfast.data.dicom.native import finish_stored
from ptxfast.data.resize import area_matrix
from ptxfast.score.config import ScoreError
from ptxfast.score.decode import Batch, HandOver

__all__ = [
    "DECODERS",
    "GPU_SYNTAXES",
    "CpuFrameDecoder",
    "FrameDecoder",
    "GpuFrames",
    "NvImageCodec",
    "model_input",
    "require",
    "resolve",
]

DECODERS = ("auto", "cpu", "gpu")
INSTALL = "pip install 'ptxfast[gpu-decode]' (nvidia-nvimgcodec-cu12)"
GPU_SYNTAXES = JPEG_DCT | JPEG_LOSSLESS | J2K | HTJ2K
"""What nvImageCodec decodes (nvJPEG, nvJPEG2000 with HTJ2K) and the workers hand over."""
_LOSSLESS = JPEG_LOSSLESS | {uid.JPEG2000Lossless, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL}
_STORED = np.dtype("<u2")  # the handed-over frames' stored values (unsigned, <= 16 bits)
# GPU against CPU for the first frame of a pair, on [0, 1] model inputs: lossless frames
# agree to rounding; lossy ones within a few code values (IDCTs and the 9/7 wavelet differ).
_LOSSLESS_TOL = 1e-4
_LOSSY_MEAN_TOL, _LOSSY_MAX_TOL = 2e-3, 0.05


class FrameDecoder(Protocol):
    """Decodes a list of compressed frames in one call: stored values, (rows, columns) on the
    scoring device, None for a frame it cannot decode."""

    name: str

    def decode(self, frames: Sequence[EncodedFrame]) -> list[torch.Tensor | None]: ...


class NvImageCodec:
    """nvImageCodec's batched decoder: one call decodes every frame of a batch on the GPU, at
    their own bit depth, and the images stay in GPU memory (read through DLPack, no copy)."""

    name = "nvImageCodec"

    def __init__(self, device: torch.device) -> None:
        from nvidia import nvimgcodec

        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        self._nv = nvimgcodec
        self._decoder = nvimgcodec.Decoder(device_id=index)
        self._params = nvimgcodec.DecodeParams(
            allow_any_depth=True, color_spec=nvimgcodec.ColorSpec.UNCHANGED
        )

    def decode(self, frames: Sequence[EncodedFrame]) -> list[torch.Tensor | None]:
        streams = [self._nv.CodeStream(bytes(ef.frame)) for ef in frames]
        stream = torch.cuda.current_stream(self.device).cuda_stream
        images = self._decoder.decode(streams, params=self._params, cuda_stream=stream)
        out: list[torch.Tensor | None] = []
        for image in images:
            if image is None:
                out.append(None)
                continue
            t = torch.from_dlpack(image) if hasattr(image, "__dlpack__") else torch.as_tensor(
                image, device=self.device
            )  # fmt: skip
            out.append(t[..., 0] if t.ndim == 3 else t)
        return out


class CpuFrameDecoder:
    """The same interface on the CPU with ptxfast's codecs (`ptxfast.data.dicom.codecs`): the
    stand-in that proves the GPU path's CPU-side parts where no GPU is (tests, the GPU check's
    dry run)."""

    name = "CPU codecs"

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def decode(self, frames: Sequence[EncodedFrame]) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for ef in frames:
            arr = cpu_codecs.decode_stored(ef.frame, ef.tsyntax, ef.rows, ef.columns, _STORED)
            out.append(
                None if arr is None else torch.from_numpy(arr.astype(np.int32)).to(self.device)
            )
        return out


def resolve(choice: str, device: torch.device) -> FrameDecoder | None:
    """The frame decoder `--decoder choice` asks for on `device`: None decodes on the CPU
    workers; `gpu` without a CUDA device or nvImageCodec is a `ScoreError` naming the install."""
    if choice not in DECODERS:
        raise ScoreError(f"--decoder {choice!r}: choose one of {', '.join(DECODERS)}")
    if choice == "cpu":
        return None
    missing = _missing(device)
    if missing is None:
        return NvImageCodec(device)
    if choice == "gpu":
        raise ScoreError(f"--decoder gpu needs {missing}: {INSTALL}, or use --decoder cpu")
    return None


def require(device: str) -> None:
    """Refuse `--decoder gpu` up front (before the model loads or the CSV is touched) where
    `--device` cannot reach a CUDA device or nvImageCodec is not installed."""
    cuda = device != "cpu" and torch.cuda.is_available()
    missing = _missing(torch.device("cuda" if cuda else "cpu"))
    if missing is not None:
        raise ScoreError(f"--decoder gpu needs {missing}: {INSTALL}, or use --decoder cpu")


def _missing(device: torch.device) -> str | None:
    """What GPU decoding lacks here, in words; None when it can run."""
    if device.type != "cuda":
        return "a CUDA device (this run scores on the CPU)"
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        return "nvImageCodec"
    return None


@functools.lru_cache(maxsize=16)
def _area_matrix(n_in: int, n_out: int, device: str) -> torch.Tensor:
    """`resize` along one axis as a dense (n_out, n_in) matrix on `device`."""
    return torch.from_numpy(area_matrix(n_in, n_out).toarray().astype(np.float64)).to(device)


def model_input(stored: torch.Tensor, ef: EncodedFrame, size: int) -> torch.Tensor:
    """Stored values on the device to the model's size x size input in [0, 1]: the bits above
    `bits_stored` ignored, clipped to the window, area-resized, mapped (`native.finish_stored`'s
    rules; float64, so the result is the CPU's to float32 rounding)."""
    x = stored.to(torch.int32) & ((1 << ef.bits_stored) - 1)
    x = x.to(torch.float64).clamp_(ef.bounds[0], ef.bounds[1])
    dev = str(x.device)
    x = _area_matrix(ef.rows, size, dev) @ x @ _area_matrix(ef.columns, size, dev).T
    return (x * ef.a + ef.b).clamp_(0.0, 1.0).to(torch.float32)


class GpuFrames:
    """The scoring process's part: decodes the frames a batch carries compressed and merges
    them with the images its workers decoded, on the device, in file order."""

    def __init__(
        self,
        decoder: FrameDecoder,
        device: torch.device,
        size: int,
        path_of: Callable[[int], Path],
        hand_over: HandOver | None = None,
    ) -> None:
        self.decoder, self.device, self.size, self.path_of = decoder, device, size, path_of
        self.hand_over = hand_over  # told when a pair turns off, so the workers decode it
        # (transfer syntax, bits stored) -> whether the GPU's first frame matched the CPU's
        self.parity: dict[tuple[str, int], bool] = {}
        self.stats: dict = dict(decoder=decoder.name, gpu_frames=0, cpu_frames=0, seconds=0.0)
        self.stats["turned_off"] = []  # "<syntax>, <bits> bits stored: max |Δ| x"

    def finish(self, batch: Batch) -> Batch:
        """`batch` with its compressed frames decoded and every image on the device."""
        if not batch.encoded:
            return batch
        t0 = time.perf_counter()
        on_gpu = [(j, ef) for j, ef in batch.encoded if self.parity.get(_pair(ef)) is not False]
        on_cpu = [(j, ef) for j, ef in batch.encoded if self.parity.get(_pair(ef)) is False]
        decoded = self.decoder.decode([ef for _, ef in on_gpu]) if on_gpu else []
        images: dict[int, torch.Tensor] = {}
        for (j, ef), stored in zip(on_gpu, decoded, strict=True):
            refused = stored is None or tuple(stored.shape) != (ef.rows, ef.columns)
            if refused or self.parity.get(_pair(ef)) is False:
                # A frame the GPU decoder will not take, or whose pair an earlier frame of this
                # batch turned off: no window and resize on the GPU for it.
                on_cpu.append((j, ef))
                continue
            img = model_input(stored.to(self.device), ef, self.size)
            if _pair(ef) not in self.parity:
                ref = self._check(batch.meta[j].index, ef, img)
                if ref is not None:  # they differ: this frame, and the pair's from now, the CPU's
                    images[j] = ref
                    self.stats["cpu_frames"] += 1
                    continue
            images[j] = img
            self.stats["gpu_frames"] += 1
        for j, ef in on_cpu:
            try:
                images[j] = torch.from_numpy(self._cpu(batch.meta[j].index, ef)).to(self.device)
                self.stats["cpu_frames"] += 1
            except Exception as err:  # this file's error row, never the run's
                name = UID(ef.tsyntax).name
                batch.meta[j].error = f"cannot decode the pixel data ({name}): {describe(err)}"
        self._merge(batch, images)
        self.stats["seconds"] += time.perf_counter() - t0
        return batch

    def _check(self, index: int, ef: EncodedFrame, img: torch.Tensor) -> torch.Tensor | None:
        """Compare the pair's first GPU frame (of file `index`) with the CPU's; a mismatch
        turns the GPU off for the pair, here and in the workers, with one warning, and returns
        the CPU's image (None when they agree)."""
        ref = torch.from_numpy(self._cpu(index, ef)).to(img.device)
        diff = (img - ref).abs()
        worst, mean = float(diff.max()), float(diff.mean())
        if ef.tsyntax in _LOSSLESS:
            ok = worst <= _LOSSLESS_TOL
        else:
            ok = mean <= _LOSSY_MEAN_TOL and worst <= _LOSSY_MAX_TOL
        self.parity[_pair(ef)] = ok
        if ok:
            return None
        if self.hand_over is not None:
            self.hand_over.turn_off(*_pair(ef))
        what = f"{UID(ef.tsyntax).name}, {ef.bits_stored} bits stored"
        self.stats["turned_off"].append(f"{what}: max |Δ| {worst:.4f}")
        warnings.warn(
            f"{self.decoder.name} decodes {what} unlike the CPU (max |Δ| {worst:.4f}, mean "
            f"{mean:.5f}); decoding those on the CPU for the rest of the run",
            stacklevel=2,
        )
        return ref

    def _cpu(self, index: int, ef: EncodedFrame) -> np.ndarray:
        """The CPU path's model input for the frame of file `index`: its fast codec at full
        resolution (the reference), else the file read again by `load_image` (pydicom)."""
        stored = cpu_codecs.decode_stored(ef.frame, ef.tsyntax, ef.rows, ef.columns, _STORED)
        if stored is not None:
            return finish_stored(stored, ef, self.size)
        return load_image(self.path_of(index), self.size)[0]

    def _merge(self, batch: Batch, decoded: dict[int, torch.Tensor]) -> None:
        """One device tensor of every decoded image, in the order of the batch's files."""
        merged = dict(decoded)
        if batch.images is not None:
            host = batch.images.to(self.device, non_blocking=True)
            merged.update({j: host[k, 0] for k, j in enumerate(batch.ok)})
        batch.ok = sorted(merged)
        batch.images = torch.stack([merged[j] for j in batch.ok])[:, None] if merged else None
        batch.encoded = []


def _pair(ef: EncodedFrame) -> tuple[str, int]:
    return ef.tsyntax, ef.bits_stored
