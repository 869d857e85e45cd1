"""GPU decoding's CPU-side parts with a stand-in decoder (frame hand-over, grouping, per-file
fallback, the parity switch, the engine's wiring), and the real nvImageCodec path behind the
`gpu` marker."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_factory import codestream, gray_pixels, image_dataset, save, with_frame
from pydicom import uid

from ptxfast.data.dicom import (
    EncodedFrame,
    ImageReadError,
    NotEligible,
    load_image,
    load_image_or_frame,
)
from ptxfast.score import gpu_decode
from ptxfast.score.config import ScoreError
from ptxfast.score.decode import Files, HandOver, collate

SIZE = 32
HAND_OVER = HandOver(gpu_decode.GPU_SYNTAXES)  # never turned off: hands over every frame


def _file(folder: Path, name: str, syntax: str, *, window=True, bits=12, seed=0) -> Path:
    pixels = gray_pixels(64, 80, bits=bits, seed=seed)
    ds = image_dataset(pixels, bits_stored=bits, window=(2048, 3000) if window else None)
    if syntax in (uid.ExplicitVRLittleEndian, uid.RLELossless):
        return save(ds, folder / name, syntax)
    return with_frame(ds, folder / name, syntax, codestream(pixels, syntax, bits))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _file(tmp_path, "a_jpegls.dcm", uid.JPEGLSLossless)  # not a GPU syntax: decoded by a worker
    _file(tmp_path, "b_htj2k.dcm", uid.HTJ2KLossless)
    (tmp_path / "c_broken.dcm").write_bytes(b"not an image at all")
    _file(tmp_path, "d_ljpeg.dcm", uid.JPEGLosslessSV1, seed=1)
    _file(tmp_path, "e_ljpeg.dcm", uid.JPEGLosslessSV1, seed=2)
    _file(tmp_path, "f_j2k_plain.dcm", uid.JPEG2000Lossless, window=False)
    return tmp_path


def _batch(folder: Path, names: list[str], hand_over: HandOver | None = None):
    state = torch.zeros(len(names), dtype=torch.int64)
    files = Files(folder, names, SIZE, state, "off", hand_over or HandOver(gpu_decode.GPU_SYNTAXES))
    return collate([files[i] for i in range(len(names))])


class Recording:
    """The CPU stand-in, recording what each call was given; `broken` decodes every frame of
    `broken` syntaxes to zeros (what nvJPEG < 13.0.2 does to 9-15-bit lossless JPEG)."""

    name = "stand-in"

    def __init__(self, broken: tuple[bytes, ...] = (), refuse: bool = False) -> None:
        self.inner = gpu_decode.CpuFrameDecoder()
        self.broken, self.refuse = broken, refuse
        self.calls: list[int] = []

    def decode(self, frames):
        self.calls.append(len(frames))
        if self.refuse:
            return [None] * len(frames)
        out = self.inner.decode(frames)
        return [
            torch.zeros_like(t) if bytes(f.frame[:2]) in self.broken else t
            for f, t in zip(frames, out, strict=True)
        ]


def _gpu(folder: Path, names: list[str], decoder, hand_over=None) -> gpu_decode.GpuFrames:
    path_of = lambda i: folder / names[i]  # noqa: E731
    return gpu_decode.GpuFrames(decoder, torch.device("cpu"), SIZE, path_of, hand_over)


def test_workers_hand_over_checked_windowed_frames_of_gpu_syntaxes(folder: Path) -> None:
    frame, info = load_image_or_frame(folder / "b_htj2k.dcm", SIZE, hand_over=HAND_OVER)
    assert isinstance(frame, EncodedFrame) and frame.tsyntax == uid.HTJ2KLossless
    assert (frame.rows, frame.columns, frame.bits_stored) == (64, 80, 12)
    assert info.transfer_syntax_uid == uid.HTJ2KLossless and info.rows == 64
    # Not a GPU syntax, or no window (min/max needs the pixels): decoded here, as load_image.
    for name in ("a_jpegls.dcm", "f_j2k_plain.dcm"):
        img, _ = load_image_or_frame(folder / name, SIZE, hand_over=HAND_OVER)
        np.testing.assert_array_equal(img, load_image(folder / name, SIZE)[0])
    # The checks come first: a codec header claiming more than the DICOM header is refused...
    lying = image_dataset(gray_pixels(64, 80), bits_stored=12, window=(2048, 3000))
    big = codestream(gray_pixels(128, 96), uid.JPEGLosslessSV1, 12)
    with_frame(lying, folder / "lying.dcm", uid.JPEGLosslessSV1, big)
    with pytest.raises(ImageReadError, match="frame header claims 128x96"):
        load_image_or_frame(folder / "lying.dcm", SIZE, hand_over=HAND_OVER)
    # ... and so is a file the eligibility rule refuses, before anything is handed over.
    ct = image_dataset(gray_pixels(64, 80), bits_stored=12, window=(2048, 3000))
    ct.Modality = "CT"
    with_frame(
        ct,
        folder / "ct.dcm",
        uid.HTJ2KLossless,
        codestream(gray_pixels(64, 80), uid.HTJ2KLossless, 12),
    )
    with pytest.raises(NotEligible):
        load_image_or_frame(folder / "ct.dcm", SIZE, eligibility="default", hand_over=HAND_OVER)


def test_collate_keeps_decoded_images_and_frames_apart(folder: Path) -> None:
    names = ["a_jpegls.dcm", "b_htj2k.dcm", "c_broken.dcm", "d_ljpeg.dcm"]
    batch = _batch(folder, names)
    assert batch.ok == [0] and batch.images.shape == (1, 1, SIZE, SIZE)
    assert [j for j, _ in batch.encoded] == [1, 3]
    assert batch.meta[2].error and batch.meta[1].error is None


def test_finish_decodes_in_one_call_and_merges_in_file_order(folder: Path) -> None:
    names = ["a_jpegls.dcm", "b_htj2k.dcm", "c_broken.dcm", "d_ljpeg.dcm", "e_ljpeg.dcm"]
    decoder = Recording()
    gpu = _gpu(folder, names, decoder)
    batch = gpu.finish(_batch(folder, names))
    assert decoder.calls == [3]  # every handed-over frame of the batch in one call
    assert batch.ok == [0, 1, 3, 4] and batch.encoded == []
    assert batch.images.shape == (4, 1, SIZE, SIZE) and batch.images.dtype == torch.float32
    for k, j in enumerate(batch.ok):
        expected = load_image(folder / names[j], SIZE)[0]  # the CPU path, exact at this size
        np.testing.assert_allclose(batch.images[k, 0].numpy(), expected, atol=1e-5)
    assert gpu.parity == {(uid.HTJ2KLossless, 12): True, (uid.JPEGLosslessSV1, 12): True}
    assert gpu.stats["gpu_frames"] == 3 and gpu.stats["cpu_frames"] == 0


def test_a_mismatch_turns_the_gpu_off_for_its_pair_with_one_warning(folder: Path) -> None:
    names = ["b_htj2k.dcm", "d_ljpeg.dcm", "e_ljpeg.dcm"]
    decoder = Recording(broken=(b"\xff\xd8",))  # lossless JPEG decodes to zeros
    gpu = _gpu(folder, names, decoder)
    with pytest.warns(UserWarning, match="JPEG Lossless.*12 bits stored unlike the CPU"):
        first = gpu.finish(_batch(folder, names))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        second = gpu.finish(_batch(folder, names))
    assert gpu.parity[(uid.JPEGLosslessSV1, 12)] is False
    assert gpu.parity[(uid.HTJ2KLossless, 12)] is True
    assert decoder.calls == [3, 1]  # the second batch sends only the HTJ2K frame
    for batch in (first, second):
        for k, j in enumerate(batch.ok):
            expected = load_image(folder / names[j], SIZE)[0]
            np.testing.assert_allclose(batch.images[k, 0].numpy(), expected, atol=1e-5)
    assert len(gpu.stats["turned_off"]) == 1


def test_a_pair_turned_off_is_decoded_by_the_workers_from_then_on(folder: Path) -> None:
    names = ["b_htj2k.dcm", "d_ljpeg.dcm", "e_ljpeg.dcm"]
    hand_over = HandOver(gpu_decode.GPU_SYNTAXES)
    # A worker forked before the check, as the loader's are, sees the pair turned off.
    ctx = torch.multiprocessing.get_context("fork")
    checked, answer = ctx.Event(), ctx.SimpleQueue()
    child = ctx.Process(target=_takes_after, args=(hand_over, folder, checked, answer))
    child.start()
    gpu = _gpu(folder, names, Recording(broken=(b"\xff\xd8",)), hand_over)
    with pytest.warns(UserWarning, match="unlike the CPU"):
        gpu.finish(_batch(folder, names, hand_over))
    checked.set()
    assert answer.get() == (True, False)  # HTJ2K still handed over, lossless JPEG not
    child.join()
    batch = _batch(folder, names, hand_over)
    assert [j for j, _ in batch.encoded] == [0] and batch.ok == [1, 2]
    for k, j in enumerate(batch.ok):
        expected = load_image(folder / names[j], SIZE)[0]
        np.testing.assert_allclose(batch.images[k, 0].numpy(), expected, atol=1e-5)


def _takes_after(hand_over: HandOver, folder: Path, checked, answer) -> None:
    checked.wait(60)
    frames = [load_image_or_frame(folder / n, SIZE, hand_over=HAND_OVER)[0] for n in
              ("b_htj2k.dcm", "d_ljpeg.dcm")]  # fmt: skip
    answer.put(tuple(hand_over(f.tsyntax, f.bits_stored) for f in frames))


def test_frames_the_decoder_refuses_fall_back_per_file(folder: Path, monkeypatch) -> None:
    names = ["b_htj2k.dcm", "d_ljpeg.dcm"]
    gpu = _gpu(folder, names, Recording(refuse=True))
    batch = gpu.finish(_batch(folder, names))
    assert batch.ok == [0, 1] and gpu.stats["cpu_frames"] == 2 and gpu.parity == {}
    # A frame no decoder reads becomes that file's error row, not the run's.
    batch = _batch(folder, names)
    j, ef = batch.encoded[0]
    batch.encoded[0] = (j, EncodedFrame(b"\xff\xd8garbage", *list(vars(ef).values())[1:]))
    monkeypatch.setattr(gpu_decode, "load_image", lambda *a: (_ for _ in ()).throw(OSError("gone")))
    batch = gpu.finish(batch)
    assert (
        batch.ok == [1] and "cannot decode the pixel data (High-Throughput" in batch.meta[0].error
    )


def test_resolve_and_require_name_the_install() -> None:
    cpu = torch.device("cpu")
    assert gpu_decode.resolve("cpu", cpu) is None
    assert gpu_decode.resolve("auto", cpu) is None
    with pytest.raises(ScoreError, match=r"needs a CUDA device.*ptxfast\[gpu-decode\]"):
        gpu_decode.resolve("gpu", cpu)
    with pytest.raises(ScoreError, match=r"ptxfast\[gpu-decode\]"):
        gpu_decode.require("cpu")


def test_model_input_is_the_cpu_path(folder: Path) -> None:
    # The GPU side's window + area resize, on the CPU, against `load_image`, at odd sizes too.
    for size in (SIZE, 50, 100):
        frame, _ = load_image_or_frame(folder / "d_ljpeg.dcm", size, hand_over=HAND_OVER)
        stored = gpu_decode.CpuFrameDecoder().decode([frame])[0]
        ours = gpu_decode.model_input(stored, frame, size).numpy()
        np.testing.assert_allclose(ours, load_image(folder / "d_ljpeg.dcm", size)[0], atol=1e-5)


def test_score_runs_the_gpu_path_with_a_stand_in(
    folder: Path, tmp_path_factory, rn34un_artifact, monkeypatch
) -> None:
    from ptxfast import score

    (folder / "c_broken.dcm").unlink()
    out = tmp_path_factory.mktemp("out")
    cpu = score.score_folder(folder, out / "cpu.csv", model=rn34un_artifact(), device="cpu",
                             batch_size=2, workers=1, model_only_iters=0, decoder="cpu")  # fmt: skip
    monkeypatch.setattr(gpu_decode, "resolve", lambda choice, dev: gpu_decode.CpuFrameDecoder())
    gpu = score.score_folder(folder, out / "gpu.csv", model=rn34un_artifact(), device="cpu",
                             batch_size=2, workers=1, model_only_iters=0)  # fmt: skip
    assert cpu.gpu_decode is None and gpu.gpu_decode["gpu_frames"] == 3
    rows = [{r["path"]: r for r in csv.DictReader(open(out / n))} for n in ("cpu.csv", "gpu.csv")]
    assert rows[0].keys() == rows[1].keys() and len(rows[0]) == 5
    for path, row in rows[0].items():
        assert row["error"] == rows[1][path]["error"] == ""
        assert abs(float(row["probability"]) - float(rows[1][path]["probability"])) < 1e-4


@pytest.mark.gpu
def test_nvimagecodec_decodes_like_the_cpu(folder: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("nvidia.nvimgcodec", reason="needs pip install 'ptxfast[gpu-decode]'")
    names = ["b_htj2k.dcm", "d_ljpeg.dcm", "e_ljpeg.dcm"]
    dev = torch.device("cuda")
    gpu = gpu_decode.GpuFrames(gpu_decode.NvImageCodec(dev), dev, SIZE, lambda i: folder / names[i])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = gpu.finish(_batch(folder, names))
    assert batch.images.device.type == "cuda" and batch.ok == [0, 1, 2]
    for k, j in enumerate(batch.ok):
        expected = load_image(folder / names[j], SIZE)[0]
        np.testing.assert_allclose(batch.images[k, 0].cpu().numpy(), expected, atol=1e-5)
    # A pair the GPU decodes wrongly (old nvJPEG, 12-bit lossless JPEG) is caught and warned.
    print(gpu.stats, [str(w.message) for w in caught])
