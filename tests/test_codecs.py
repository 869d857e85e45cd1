"""The fast codecs: pixel-exact against pydicom for lossless syntaxes, codec headers checked
before decoding, reduced-resolution reads within their bound, pydicom as the fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import codestream, gray_pixels, image_dataset, reduced_calls, save, with_frame
from pydicom import uid
from pydicom.encaps import generate_frames

from ptxfast.data.dicom import ImageReadError, codecs, load_image, read_image, resize

# (syntax, bits stored): every lossless syntax the fast path decodes with its own codec.
LOSSLESS = [
    (uid.JPEGLosslessSV1, 12),
    (uid.JPEGLosslessSV1, 16),
    (uid.JPEGLossless, 12),
    (uid.JPEGLSLossless, 12),
    (uid.JPEGLSLossless, 16),
    (uid.JPEG2000Lossless, 12),
    (uid.JPEG2000Lossless, 16),
    (uid.HTJ2KLossless, 12),
    (uid.HTJ2KLosslessRPCL, 12),
    (uid.HTJ2KLossless, 16),
]
_ids = lambda v: str(getattr(v, "name", v))  # noqa: E731


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Record (syntax, decoded) for every fast full decode."""
    calls: list[tuple[str, bool]] = []
    real = codecs.decode_stored

    def recording(frame, tsyntax, *args):
        out = real(frame, tsyntax, *args)
        calls.append((tsyntax, out is not None))
        return out

    monkeypatch.setattr(codecs, "decode_stored", recording)
    return calls


@pytest.mark.parametrize(("syntax", "bits"), LOSSLESS, ids=_ids)
def test_lossless_fast_codecs_equal_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str, bits: int
) -> None:
    pixels = gray_pixels(72, 88, bits=bits)
    ds = image_dataset(pixels, bits_stored=bits, window=(0.4 * 2**bits, 0.6 * 2**bits))
    path = with_frame(ds, tmp_path / "c.dcm", syntax, codestream(pixels, syntax, bits))
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, pixels)
    calls = _calls(monkeypatch)
    reference = read_image(path, fast=False)  # pydicom's decode and LUT functions
    np.testing.assert_allclose(read_image(path), reference, atol=1e-6, rtol=0)
    np.testing.assert_allclose(load_image(path, 44)[0], resize(reference, 44), atol=1e-6)
    assert calls == [(syntax, True), (syntax, True)]


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_rle_frames_decode_directly_and_equal_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bits: int
) -> None:
    pixels = gray_pixels(72, 88, bits=bits, seed=4)
    ds = image_dataset(pixels, bits_stored=bits, window=(0.4 * 2**bits, 0.6 * 2**bits))
    path = save(ds, tmp_path / "rle.dcm", uid.RLELossless)
    calls = _calls(monkeypatch)
    reference = read_image(path, fast=False)
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, pixels)
    np.testing.assert_allclose(read_image(path), reference, atol=1e-6, rtol=0)
    np.testing.assert_allclose(load_image(path, 44)[0], resize(reference, 44), atol=1e-6)
    assert calls == [(uid.RLELossless, True)] * 2
    # A frame with too few segments for the header's bits is left to pydicom, which reports it.
    frame = next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
    assert codecs.decode_stored(frame, uid.RLELossless, 72, 88, np.dtype("<u4")) is None


@pytest.mark.parametrize(
    ("syntax", "bits", "tol"),
    [
        (uid.JPEGBaseline8Bit, 8, 2 / 255),
        (uid.JPEGExtended12Bit, 12, 4 / 4095),
        (uid.JPEGLSNearLossless, 12, 1e-6),
        (uid.JPEG2000, 12, 1e-6),
        (uid.HTJ2K, 12, 2 / 4095),  # OpenJPH and OpenJPEG round the 9/7 wavelet apart
    ],
    ids=_ids,
)
def test_lossy_fast_codecs_match_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str, bits: int, tol: float
) -> None:
    # JPEG-LS near-lossless and reversible wavelets decode the same way everywhere; IDCTs and
    # the irreversible wavelet may differ by a code value or two.
    pixels = gray_pixels(64, 64, bits=bits)
    ds = image_dataset(pixels, bits_stored=bits, window=(2 ** (bits - 1), 2**bits))
    path = with_frame(ds, tmp_path / "c.dcm", syntax, codestream(pixels, syntax, bits))
    calls = _calls(monkeypatch)
    fast, reference = read_image(path), read_image(path, fast=False)
    assert calls == [(syntax, True)]
    assert np.abs(fast - reference).max() <= tol


@pytest.mark.parametrize(
    "syntax",
    [
        uid.JPEGLosslessSV1,
        uid.JPEGExtended12Bit,
        uid.JPEGLSLossless,
        uid.JPEG2000Lossless,
        uid.HTJ2KLossless,
    ],
    ids=_ids,
)
def test_codec_header_larger_than_the_dicom_header_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str
) -> None:
    pixels = gray_pixels(128, 96)
    ds = image_dataset(pixels, bits_stored=12, window=(2048, 4096))
    frame = codestream(pixels, syntax, 12)
    ds.Rows, ds.Columns = 32, 48  # the DICOM header lies low; the codestream keeps 128x96
    path = with_frame(ds, tmp_path / "lying.dcm", syntax, frame)
    decoded = []
    monkeypatch.setattr(codecs, "_FULL", {s: lambda *a: decoded.append(a) for s in codecs._FULL})
    monkeypatch.setattr(codecs, "decode_reduced", lambda *a: decoded.append(a))
    with pytest.raises(ImageReadError, match="frame header claims 128x96 pixels, more than"):
        load_image(path, 16)
    assert decoded == []


def test_a_frame_the_fast_codec_refuses_falls_back_to_pydicom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = gray_pixels(64, 64)
    ds = image_dataset(pixels, bits_stored=12, window=(2048, 4096))
    path = with_frame(
        ds, tmp_path / "c.dcm", uid.JPEGLSLossless, codestream(pixels, uid.JPEGLSLossless, 12)
    )

    def refuse(frame: bytes, *_) -> np.ndarray:
        raise RuntimeError("not this codestream")

    monkeypatch.setitem(codecs._FULL, uid.JPEGLSLossless, refuse)
    np.testing.assert_allclose(read_image(path), read_image(path, fast=False), atol=1e-6)
    # A decoded shape other than the header's is not taken either.
    monkeypatch.setitem(codecs._FULL, uid.JPEGLSLossless, lambda f, *_: pixels[:32])
    np.testing.assert_allclose(read_image(path), read_image(path, fast=False), atol=1e-6)
    # Signed pixels keep pydicom's sign conventions.
    assert codecs.decode_stored(b"", uid.JPEGLSLossless, 64, 64, np.dtype("<i2")) is None


@pytest.mark.parametrize(
    ("syntax", "bits", "side", "out"),
    [
        (uid.JPEGBaseline8Bit, 8, 512, 64),  # 1/8 scaling
        (uid.JPEGBaseline8Bit, 8, 512, 128),  # 1/2 scaling (1/4 would lack the margin)
        (uid.JPEGBaseline8Bit, 8, 504, 100),  # 1/2, a fractional resize after
        (uid.HTJ2KLossless, 12, 512, 32),  # level 2
        (uid.HTJ2KLosslessRPCL, 12, 512, 100),  # level 1, a fractional resize after
        (uid.JPEG2000Lossless, 12, 512, 32),
    ],
    ids=_ids,
)
def test_reduced_reads_stay_within_the_bound_of_full_decode_and_area_resize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str, bits: int, side: int, out: int
) -> None:
    pixels = gray_pixels(side, side, bits=bits, seed=3)
    window = (0.45 * 2**bits, 0.6 * 2**bits)
    ds = image_dataset(pixels, bits_stored=bits, window=window)
    path = with_frame(ds, tmp_path / "c.dcm", syntax, codestream(pixels, syntax, bits))
    calls = reduced_calls(monkeypatch)
    small = load_image(path, out)[0]
    assert calls == [True] and small.shape == (out, out) and small.dtype == np.float32
    # The same codestream decoded whole, then area-resized.
    expected = resize(read_image(path), out)
    assert np.abs(small - expected).mean() < 0.002
    assert np.abs(small - expected).max() < 0.02


def test_reduced_reads_are_skipped_where_they_do_not_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = gray_pixels(512, 512, bits=12)
    calls = reduced_calls(monkeypatch)
    # 12-bit JPEG: no maintained binding scales 12-bit DCT frames, so it decodes whole.
    frame = codestream(pixels, uid.JPEGExtended12Bit, 12)
    ds = image_dataset(pixels, bits_stored=12, window=(2048, 2000))
    path = with_frame(ds, tmp_path / "x.dcm", uid.JPEGExtended12Bit, frame)
    np.testing.assert_allclose(load_image(path, 64)[0], resize(read_image(path), 64), atol=1e-6)
    # Not shrinking enough for a coarser read: exact pixels.
    frame = codestream(pixels, uid.HTJ2KLossless, 12)
    path = with_frame(ds, tmp_path / "h.dcm", uid.HTJ2KLossless, frame)
    np.testing.assert_allclose(load_image(path, 300)[0], resize(read_image(path), 300), atol=1e-6)
    # Without a window, min/max normalisation needs the full-resolution extremes.
    plain = with_frame(
        image_dataset(pixels, bits_stored=12), tmp_path / "p.dcm", uid.HTJ2KLossless, frame
    )
    np.testing.assert_allclose(load_image(plain, 32)[0], resize(read_image(plain), 32), atol=1e-6)
    assert calls == [False, False]  # asked for the two windowed reads; neither went reduced


def test_htj2k_levels_equal_jpeg2000_levels(tmp_path: Path) -> None:
    # OpenJPH's skipped resolutions and OpenJPEG's reduce give the same low-pass samples.
    pixels = gray_pixels(300, 260, bits=12, seed=1)
    ds = image_dataset(pixels, bits_stored=12, window=(2000, 2500))
    reads = []
    for syntax in (uid.JPEG2000Lossless, uid.HTJ2KLossless):
        path = with_frame(ds, tmp_path / "c.dcm", syntax, codestream(pixels, syntax, 12))
        reads.append(load_image(path, 40)[0])
    np.testing.assert_allclose(reads[0], reads[1], atol=1e-6)


def test_dct_scaled_reads_take_only_whole_grayscale_8_bit_frames() -> None:
    import imagecodecs

    gray = gray_pixels(256, 256, bits=8, seed=2)
    frame = imagecodecs.jpeg8_encode(gray, level=90)
    scaled = codecs.decode_reduced(frame, uid.JPEGBaseline8Bit, 256, 256, 8, 32)
    assert scaled is not None and scaled.shape == (32, 32) and scaled.dtype == np.uint16
    # The 1/8 read is the blocks' DC: within JPEG's rounding of the blocks' means.
    means = gray.reshape(32, 8, 32, 8).mean(axis=(1, 3))
    assert np.abs(scaled - means).max() <= 3
    # A colour frame, a cut-off frame and a 12-bit frame are left to the whole decode.
    colour = imagecodecs.jpeg8_encode(np.stack([gray] * 3, axis=-1), level=90)
    assert codecs.decode_reduced(colour, uid.JPEGBaseline8Bit, 256, 256, 8, 32) is None
    cut = frame[: len(frame) // 2]
    assert codecs.decode_reduced(cut, uid.JPEGBaseline8Bit, 256, 256, 8, 32) is None
    deep = codestream(gray_pixels(256, 256, bits=12, seed=2), uid.JPEGExtended12Bit, 12)
    assert codecs.decode_reduced(deep, uid.JPEGExtended12Bit, 256, 256, 12, 32) is None
