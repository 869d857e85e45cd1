"""Image reading: every writable transfer syntax, the pixel rules, PNG/JPEG, errors, resize."""

from __future__ import annotations

import re
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import (
    deflated,
    gray_pixels,
    image_dataset,
    reduced_calls,
    rgb_pixels,
    save,
    save_bare,
    structured_report,
)
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import get_encoder

from ptxfast.data import dicom, scratch
from ptxfast.data.dicom import ImageReadError, is_dicom, load_image, read_image, resize

LUMA = np.array([0.299, 0.587, 0.114])


def _needs_encoder(syntax: str) -> None:
    if syntax in (uid.JPEGBaseline8Bit, uid.JPEGLosslessSV1) or not uid.UID(syntax).is_compressed:
        return  # written by Pillow, by the test encoder, or natively
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no installed encoder writes {uid.UID(syntax).name}")


def _minmax(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


# ---------------------------------------------------------------- transfer syntaxes

LOSSLESS = [
    (uid.ImplicitVRLittleEndian, 12),
    (uid.ExplicitVRBigEndian, 12),
    (uid.ExplicitVRBigEndian, 8),
    (uid.DeflatedExplicitVRLittleEndian, 12),
    (uid.RLELossless, 12),
    (uid.RLELossless, 8),
    (uid.JPEG2000Lossless, 12),
    (uid.JPEG2000Lossless, 16),
    (uid.JPEGLSLossless, 12),
    (uid.JPEGLSLossless, 16),
    (uid.JPEGLosslessSV1, 12),
    (uid.JPEGLosslessSV1, 16),
]


@pytest.mark.parametrize(("syntax", "bits"), LOSSLESS, ids=lambda v: str(getattr(v, "name", v)))
def test_lossless_syntaxes_equal_the_uncompressed_reference(
    tmp_path: Path, syntax: str, bits: int
) -> None:
    _needs_encoder(syntax)
    pixels = gray_pixels(64, 80, bits=bits)
    if bits == 16:
        pixels[0, :2] = (0, 32768)  # a difference of 2^15: lossless JPEG's category 16
    ds = image_dataset(pixels, bits_stored=bits, window=(0.4 * 2**bits, 0.6 * 2**bits))
    reference = read_image(save(ds, tmp_path / "ref.dcm"), fast=False)
    path = save(ds, tmp_path / "coded.dcm", syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_image(path, fast=False), reference)
    np.testing.assert_allclose(read_image(path), reference, atol=1e-6)
    np.testing.assert_allclose(load_image(path, 32)[0], resize(reference, 32), atol=1e-6)


def test_jpeg2000_shrinks_at_a_reduced_resolution_under_a_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_encoder(uid.JPEG2000Lossless)
    levels = reduced_calls(monkeypatch)
    pixels = gray_pixels(512, 512)
    ds = image_dataset(pixels, bits_stored=12, window=(1800, 2501))
    reference = read_image(save(ds, tmp_path / "ref.dcm"), fast=False)
    path = save(ds, tmp_path / "j2k.dcm", uid.JPEG2000Lossless)
    # 512 -> 32: level 2 (128 px, 4x the output) decoded, then area-resized.
    small = load_image(path, 32)[0]
    assert levels == [True] and small.shape == (32, 32) and small.dtype == np.float32
    expected = resize(reference, 32)
    assert np.abs(small - expected).mean() < 0.002
    assert np.abs(small - expected).max() < 0.02
    # Not shrinking enough for a coarser level (or not shrinking): exact pixels.
    np.testing.assert_allclose(load_image(path, 256)[0], resize(reference, 256), atol=1e-6)
    np.testing.assert_allclose(read_image(path), reference, atol=1e-6)
    # Without a window, min/max normalisation needs the full-resolution extremes.
    plain = save(
        image_dataset(pixels, bits_stored=12), tmp_path / "plain.dcm", uid.JPEG2000Lossless
    )
    reference = read_image(save(image_dataset(pixels, bits_stored=12), tmp_path / "p.dcm"))
    np.testing.assert_allclose(load_image(plain, 32)[0], resize(reference, 32), atol=1e-6)
    assert levels.count(True) == 1  # only the windowed 512 -> 32 read went reduced


@pytest.mark.parametrize(
    ("syntax", "atol", "mean_tol"),
    [(uid.JPEG2000, 0.05, 0.01), (uid.JPEGLSNearLossless, 2.01 / 4096, 1.5 / 4096)],
    ids=["jpeg2000", "jpegls-near-lossless"],
)
def test_lossy_syntaxes_are_close(
    tmp_path: Path, syntax: str, atol: float, mean_tol: float
) -> None:
    _needs_encoder(syntax)
    # A window over the full 12-bit range fixes the scale (min/max would move with the codec).
    ds = image_dataset(gray_pixels(64, 64), bits_stored=12, window=(2048, 4097))
    reference = read_image(save(ds, tmp_path / "ref.dcm"))
    img = read_image(save(ds, tmp_path / "lossy.dcm", syntax))
    assert np.abs(img - reference).max() <= atol
    assert np.abs(img - reference).mean() < mean_tol


def test_jpeg_baseline_gray(tmp_path: Path) -> None:
    pixels = gray_pixels(64, 64, bits=8)
    ds = image_dataset(pixels)
    img = read_image(save(ds, tmp_path / "jpeg.dcm", uid.JPEGBaseline8Bit))
    expected = _minmax(pixels)
    assert np.abs(img - expected).mean() < 0.01
    assert np.abs(img - expected).max() < 0.08


def test_rgb_and_ybr_become_luma(tmp_path: Path) -> None:
    rgb = rgb_pixels(48, 64)
    expected = rgb @ LUMA / 255.0
    native = read_image(save(image_dataset(rgb), tmp_path / "rgb.dcm"))
    np.testing.assert_allclose(native, expected, atol=1e-6)

    ybr = pydicom.pixels.convert_color_space(rgb, "RGB", "YBR_FULL")
    from_ybr = read_image(save(image_dataset(ybr, photometric="YBR_FULL"), tmp_path / "ybr.dcm"))
    np.testing.assert_allclose(from_ybr, expected, atol=2 / 255)

    jpeg = save(image_dataset(rgb), tmp_path / "rgb_jpeg.dcm", uid.JPEGBaseline8Bit)
    assert pydicom.dcmread(jpeg).PhotometricInterpretation == "YBR_FULL_422"
    img = read_image(jpeg)
    assert img.shape == (48, 64) and img.dtype == np.float32
    assert np.abs(img - expected).mean() < 0.01


# ---------------------------------------------------------------- pixel rules


def test_no_window_normalises_by_min_max(tmp_path: Path) -> None:
    pixels = gray_pixels(64, 64)
    img, info = load_image(save(image_dataset(pixels, bits_stored=12), tmp_path / "a.dcm"))
    assert img.dtype == np.float32 and img.shape == (64, 64)
    assert img.min() == 0.0 and img.max() == 1.0
    np.testing.assert_allclose(img, _minmax(pixels), atol=1e-6)
    assert (info.rows, info.columns, info.n_frames) == (64, 64, 1)


@pytest.mark.parametrize("function", [None, "LINEAR", "LINEAR_EXACT"])
def test_window_is_applied(tmp_path: Path, function: str | None) -> None:
    pixels = gray_pixels(64, 64)
    center, width = 1800.0, 1201.0
    ds = image_dataset(pixels, bits_stored=12, window=(center, width), voi_function=function)
    x = pixels.astype(np.float64)
    if function == "LINEAR_EXACT":
        expected = np.clip((x - center) / width + 0.5, 0, 1)
    else:  # PS3.3 C.11.2.1.2: LINEAR uses c - 0.5 and w - 1
        expected = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    assert 0 < (expected == 0).sum() and 0 < (expected == 1).sum()  # the window clips
    for fast in (True, False):
        np.testing.assert_allclose(
            read_image(save(ds, tmp_path / "w.dcm"), fast=fast), expected, atol=1e-6
        )


def test_sigmoid_window(tmp_path: Path) -> None:
    pixels = gray_pixels(64, 64)
    center, width = 2000.0, 800.0
    ds = image_dataset(pixels, bits_stored=12, window=(center, width), voi_function="SIGMOID")
    expected = 1.0 / (1.0 + np.exp(-4.0 * (pixels - center) / width))  # PS3.3 C.11.2.1.3.1
    for fast in (True, False):
        img = read_image(save(ds, tmp_path / "s.dcm"), fast=fast)
        np.testing.assert_allclose(img, expected, atol=1e-6)


def test_32_bit_pixels(tmp_path: Path) -> None:
    pixels = gray_pixels(32, 32, bits=16).astype(np.uint32) * 1000
    img = read_image(save(image_dataset(pixels, bits_stored=32), tmp_path / "p32.dcm"))
    np.testing.assert_allclose(img, _minmax(pixels), atol=1e-6)


def test_rescale_then_window(tmp_path: Path) -> None:
    pixels = gray_pixels(64, 64)
    slope, intercept, center, width = 2.0, -1000.0, 2500.0, 3001.0
    ds = image_dataset(pixels, bits_stored=12, rescale=(slope, intercept), window=(center, width))
    x = pixels * slope + intercept
    expected = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    for fast in (True, False):
        img = read_image(save(ds, tmp_path / "r.dcm"), fast=fast)
        np.testing.assert_allclose(img, expected, atol=1e-6)


def test_signed_pixels_with_rescale_and_no_window(tmp_path: Path) -> None:
    pixels = gray_pixels(64, 64, bits=16, signed=True)
    ds = image_dataset(pixels, rescale=(-0.5, 100.0))
    expected = _minmax(pixels * -0.5 + 100.0)  # a negative slope flips the gray scale
    for fast in (True, False):
        img = read_image(save(ds, tmp_path / "s.dcm"), fast=fast)
        np.testing.assert_allclose(img, expected, atol=1e-6)


@pytest.mark.parametrize("window", [None, (2000.0, 1500.0)])
def test_monochrome1_is_the_inverse_of_its_monochrome2_twin(
    tmp_path: Path, window: tuple[float, float] | None
) -> None:
    pixels = gray_pixels(64, 64)
    mono2 = image_dataset(pixels, bits_stored=12, window=window)
    mono1 = image_dataset(pixels, bits_stored=12, window=window, photometric="MONOCHROME1")
    for fast in (True, False):
        a = read_image(save(mono2, tmp_path / "m2.dcm"), fast=fast)
        b = read_image(save(mono1, tmp_path / "m1.dcm"), fast=fast)
        np.testing.assert_allclose(b, 1.0 - a, atol=1e-6)


def test_unused_high_bits_are_ignored(tmp_path: Path) -> None:
    pixels = gray_pixels(64, 64)
    noisy = pixels | (np.random.default_rng(1).integers(0, 16, pixels.shape, dtype=np.uint16) << 12)
    clean = read_image(save(image_dataset(pixels, bits_stored=12), tmp_path / "c.dcm"))
    for fast in (True, False):
        img = read_image(save(image_dataset(noisy, bits_stored=12), tmp_path / "n.dcm"), fast=fast)
        np.testing.assert_allclose(img, clean, atol=1e-6)


def test_multi_frame_warns_and_returns_the_first_frame(tmp_path: Path) -> None:
    stack = np.stack([gray_pixels(64, 64, seed=s) for s in range(3)])
    path = save(image_dataset(stack, bits_stored=12, frames=True), tmp_path / "mf.dcm")
    for fast in (True, False):
        with pytest.warns(UserWarning, match="3 frames"):
            img, info = load_image(path, fast=fast)
        assert info.n_frames == 3
        np.testing.assert_allclose(img, _minmax(stack[0]), atol=1e-6)


def test_enhanced_functional_groups_supply_rescale_and_window(tmp_path: Path) -> None:
    pixels = gray_pixels(64, 64)
    plain = image_dataset(pixels, bits_stored=12, rescale=(2.0, -50.0), window=(3000.0, 2000.0))
    enhanced = image_dataset(pixels, bits_stored=12)
    transform, voi, group = Dataset(), Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 2.0, -50.0, "US"
    voi.WindowCenter, voi.WindowWidth = 3000.0, 2000.0
    group.PixelValueTransformationSequence = [transform]
    group.FrameVOILUTSequence = [voi]
    enhanced.SharedFunctionalGroupsSequence = [group]
    expected = read_image(save(plain, tmp_path / "plain.dcm"))
    for fast in (True, False):
        img = read_image(save(enhanced, tmp_path / "enh.dcm"), fast=fast)
        np.testing.assert_allclose(img, expected, atol=1e-6)


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    pixels = gray_pixels(64, 64, bits=8)
    ds = image_dataset(pixels)
    item = Dataset()
    lut = (np.linspace(0, 1, 256) ** 2 * 65535).astype(np.uint16)
    item.add_new(0x00283002, "US", [256, 0, 16])  # LUT Descriptor: entries, first, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = [item]
    img = read_image(save(ds, tmp_path / "lut.dcm"))
    np.testing.assert_allclose(img, lut[pixels] / 65535.0, atol=1e-6)
    # The LUT indexes the rescaled values (here stored + 10, LUT shifted to match).
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, 10.0
    item.LUTDescriptor = [256, 10, 16]
    img = read_image(save(ds, tmp_path / "lut_rescaled.dcm"))
    np.testing.assert_allclose(img, lut[pixels] / 65535.0, atol=1e-6)


def test_flat_image_and_invalid_window(tmp_path: Path) -> None:
    flat = np.full((16, 16), 700, dtype=np.uint16)
    for fast in (True, False):
        assert not read_image(save(image_dataset(flat), tmp_path / "f.dcm"), fast=fast).any()
    pixels = gray_pixels(32, 32)
    bad = image_dataset(pixels, bits_stored=12, window=(1000.0, 0.0))
    with pytest.warns(UserWarning, match="window"):
        img = read_image(save(bad, tmp_path / "bad.dcm"))
    np.testing.assert_allclose(img, _minmax(pixels), atol=1e-6)


def test_unusable_rescale_and_window_tags_are_ignored(tmp_path: Path) -> None:
    pixels = gray_pixels(32, 32)
    expected = _minmax(pixels)
    empty = image_dataset(pixels, bits_stored=12)
    empty.add_new(0x00281050, "DS", None)  # Window Center, empty
    empty.add_new(0x00281051, "DS", None)
    lone = image_dataset(pixels, bits_stored=12)
    lone.RescaleSlope = 3.0  # without an intercept pydicom does not rescale; nor do we
    lone.WindowWidth = 100.0  # without a center there is no window
    malformed = image_dataset(pixels, bits_stored=12, window=("1111.25", "500"))
    malformed_path = save(malformed, tmp_path / "malformed.dcm")
    data = malformed_path.read_bytes()
    assert data.count(b"1111.25") == 1
    malformed_path.write_bytes(data.replace(b"1111.25", b"abcdefg"))
    for fast in (True, False):
        for ds, name in ((empty, "empty"), (lone, "lone")):
            img = read_image(save(ds, tmp_path / f"{name}.dcm"), fast=fast)
            np.testing.assert_allclose(img, expected, atol=1e-6)
        with pytest.warns(UserWarning, match="malformed WindowCenter"):
            img = read_image(malformed_path, fast=fast)
        np.testing.assert_allclose(img, expected, atol=1e-6)


def test_corrupt_compressed_pixels_and_missing_rows_are_refused(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate

    ds = image_dataset(gray_pixels(32, 32), bits_stored=12)
    ds.PixelData = encapsulate([np.random.default_rng(5).bytes(600)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid.JPEG2000Lossless
    ds.save_as(tmp_path / "garbage.dcm", enforce_file_format=True)
    _assert_refused(tmp_path / "garbage.dcm", r"cannot decode the pixel data \(JPEG 2000")
    ds = image_dataset(gray_pixels(32, 32), bits_stored=12)
    del ds.Rows
    _assert_refused(save(ds, tmp_path / "norows.dcm"), "no valid Rows/Columns")


# ---------------------------------------------------------------- fast path == full path

# Windows with an even integer width put the clip bounds on integers, odd ones on halves,
# others anywhere: the fast path has an integer and a float variant for these.
FAST_VARIANTS = {
    "12bit-minmax": dict(pixels=gray_pixels(128, 96), bits_stored=12),
    "12bit-window-even": dict(pixels=gray_pixels(128, 128), bits_stored=12, window=(2000, 1000)),
    "12bit-window-odd": dict(pixels=gray_pixels(128, 128), bits_stored=12, window=(2000, 1001)),
    "12bit-window-fraction": dict(
        pixels=gray_pixels(128, 128), bits_stored=12, window=(2047.3, 999.7)
    ),
    "16bit-window-odd": dict(pixels=gray_pixels(128, 128, bits=16), window=(30000, 20001)),
    "16bit-rescale-window": dict(
        pixels=gray_pixels(128, 128, bits=16), rescale=(0.25, -300.0), window=(5000, 8001)
    ),
    "signed-rescale": dict(
        pixels=gray_pixels(128, 128, bits=13, signed=True), bits_stored=13, rescale=(1.0, -1024.0)
    ),
    "signed-window-odd": dict(
        pixels=gray_pixels(128, 128, bits=13, signed=True), bits_stored=13, window=(-100, 2001)
    ),
    "8bit-exact-window": dict(
        pixels=gray_pixels(96, 96, bits=8), window=(100, 81), voi_function="LINEAR_EXACT"
    ),
    # 8 bits stored in 8: the odd width's halves need the values doubled in 16 bits.
    "8bit-window-odd": dict(pixels=gray_pixels(96, 96, bits=8), window=(120, 101)),
    "8bit-window-above-range": dict(pixels=gray_pixels(64, 64, bits=8), window=(1000, 100)),
    "12bit-window-below-range": dict(
        pixels=gray_pixels(64, 64), bits_stored=12, window=(-5000.3, 100.2)
    ),
    "12bit-window-wider-than-range": dict(
        pixels=gray_pixels(64, 64), bits_stored=12, window=(2000.3, 9000.1)
    ),
    "mono1-window": dict(
        pixels=gray_pixels(128, 128), bits_stored=12, window=(1500, 2001), photometric="MONOCHROME1"
    ),
    "mono1-minmax": dict(pixels=gray_pixels(64, 64), bits_stored=12, photometric="MONOCHROME1"),
    "narrow-window": dict(pixels=gray_pixels(128, 128), bits_stored=12, window=(2047.5, 2)),
    "narrow-window-fraction": dict(
        pixels=gray_pixels(128, 128), bits_stored=12, window=(2047.7, 3)
    ),
}


@pytest.mark.parametrize(
    "syntax", [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian], ids=["explicit", "implicit"]
)
@pytest.mark.parametrize("variant", FAST_VARIANTS)
def test_fast_path_gives_the_full_path_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, syntax: str
) -> None:
    options = dict(FAST_VARIANTS[variant])
    path = save(image_dataset(options.pop("pixels"), **options), tmp_path / "v.dcm", syntax)
    full = read_image(path, fast=False)

    def no_full_decode(ds):  # prove the fast path ran
        raise AssertionError("fell back to the full decode")

    monkeypatch.setattr(dicom, "_decode_full", no_full_decode)
    rows, columns = full.shape
    # None: no resize; rows / 2, rows / 4: integer factors (block means); 50: area weights.
    for size in (None, rows // 2, rows // 4, 50):
        fast, info = load_image(path, size)
        expected = full if size is None else resize(full, size)
        assert fast.dtype == np.float32 and fast.shape == expected.shape
        np.testing.assert_allclose(fast, expected, atol=1e-6, rtol=0, err_msg=f"size {size}")
        assert 0.0 <= fast.min() and fast.max() <= 1.0
        assert (info.rows, info.columns) == (rows, columns)


@pytest.mark.parametrize("keep_buffers", [True, False])
def test_fast_path_resize_output_is_not_a_shared_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_buffers: bool
) -> None:
    if not keep_buffers:  # as for images too big to keep scratch buffers for
        monkeypatch.setattr(scratch, "_SCRATCH_MAX_BYTES", 0)
    for window in (None, (2000.3, 1000.3)):  # the integer and the float variants
        first = save(
            image_dataset(gray_pixels(64, 64, seed=1), bits_stored=12, window=window),
            tmp_path / "a.dcm",
        )
        second = save(
            image_dataset(gray_pixels(64, 64, seed=2), bits_stored=12, window=window),
            tmp_path / "b.dcm",
        )
        for size in (64, 32, 48):
            a = load_image(first, size)[0]
            kept = a.copy()
            load_image(second, size)
            np.testing.assert_array_equal(a, kept)


# ---------------------------------------------------------------- real-world files (pydicom's)

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _pydicom_file(name: str) -> Path:
    path = PYDICOM_FILES / name
    if not path.exists():
        pytest.skip(f"pydicom's test file {name} is not installed")
    return path


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_pydicom_mr_in_every_syntax_matches_the_explicit_original(name: str) -> None:
    reference = read_image(_pydicom_file("MR_small.dcm"), fast=False)
    np.testing.assert_array_equal(read_image(_pydicom_file(name), fast=False), reference)
    np.testing.assert_allclose(read_image(_pydicom_file(name)), reference, atol=2e-6)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "JPGExtended.dcm",
        "JPEG2000.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "examples_palette.dcm",
        "examples_ybr_color.dcm",
        "image_dfl.dcm",
    ],
)
def test_pydicom_sample_images_read(name: str) -> None:
    path = _pydicom_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some samples are multi-frame or slightly off-standard
        img, info = load_image(path)
    header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    assert img.shape == (header.Rows, header.Columns) and img.dtype == np.float32
    assert np.isfinite(img).all() and 0.0 <= img.min() and img.max() <= 1.0
    assert img.max() > img.min()
    assert info.transfer_syntax_uid


@pytest.mark.parametrize(
    "name",
    [
        "rtplan.dcm",
        "test-SR.dcm",
        "waveform_ecg.dcm",
        "ExplVR_BigEndNoMeta.dcm",  # bare data sets (no preamble) are still recognised
        "ExplVR_LitEndNoMeta.dcm",
    ],
)
def test_pydicom_objects_without_pixels_are_refused(name: str) -> None:
    with pytest.raises(ImageReadError, match=rf"{name}: DICOM without pixel data"):
        read_image(_pydicom_file(name))


# ---------------------------------------------------------------- PNG / JPEG


def test_png_8_and_16_bit_and_jpeg(tmp_path: Path) -> None:
    gray8 = gray_pixels(40, 56, bits=8)
    gray16 = gray_pixels(40, 56, bits=16)
    Image.fromarray(gray8).save(tmp_path / "a.png")
    Image.fromarray(gray16).save(tmp_path / "b.png")
    Image.fromarray(gray8).save(tmp_path / "c.jpg", quality=95)
    img8, info = load_image(tmp_path / "a.png")
    np.testing.assert_allclose(img8, gray8 / 255.0, atol=1e-6)
    assert (info.rows, info.columns, info.n_frames, info.sop_instance_uid) == (40, 56, None, None)
    np.testing.assert_allclose(read_image(tmp_path / "b.png"), gray16 / 65535.0, atol=1e-6)
    jpeg = read_image(tmp_path / "c.jpg")
    assert np.abs(jpeg - gray8 / 255.0).mean() < 0.01


def test_tiff_float_and_32_bit_int(tmp_path: Path) -> None:
    values = gray_pixels(24, 24, bits=16)
    Image.fromarray(values.astype(np.float32) * 0.5 - 100).save(tmp_path / "f.tif")
    np.testing.assert_allclose(read_image(tmp_path / "f.tif"), _minmax(values), atol=1e-6)
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "i.tif")
    np.testing.assert_allclose(read_image(tmp_path / "i.tif"), values / 65535.0, atol=1e-6)


def test_rgb_png_becomes_luma_and_resizes(tmp_path: Path) -> None:
    rgb = rgb_pixels(64, 64)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    img, info = load_image(tmp_path / "rgb.png", 32)
    assert info.photometric == "RGB" and img.shape == (32, 32)
    np.testing.assert_allclose(img, resize(rgb @ LUMA / 255.0, 32), atol=1e-5)


# ---------------------------------------------------------------- errors


def _assert_refused(path: Path, reason: str) -> None:
    """Both decode paths raise ImageReadError: "<path>: <reason>"."""
    for fast in (True, False):
        with pytest.raises(ImageReadError, match=rf"^{re.escape(str(path))}: .*{reason}"):
            read_image(path, fast=fast)


def test_structured_report_is_refused(tmp_path: Path) -> None:
    _assert_refused(structured_report(tmp_path / "report.dcm"), "Comprehensive SR")


@pytest.mark.parametrize(
    ("size", "syntax"),
    [
        (48, uid.ExplicitVRLittleEndian),  # pixels small enough to be read with the header
        (128, uid.ExplicitVRLittleEndian),  # pixels left on disk until decoded
        (128, uid.ImplicitVRLittleEndian),
        (128, uid.ExplicitVRBigEndian),
        (128, uid.DeflatedExplicitVRLittleEndian),
        (128, uid.RLELossless),
        (128, uid.JPEGLosslessSV1),
    ],
    ids=["inline", "deferred", "implicit", "big-endian", "deflate", "rle", "jpeg-lossless"],
)
@pytest.mark.filterwarnings("ignore:End of file reached")  # pydicom's, for encapsulated data
def test_truncated_dicom_is_refused(tmp_path: Path, size: int, syntax: str) -> None:
    whole = save(image_dataset(gray_pixels(size, size), bits_stored=12), tmp_path / "w.dcm", syntax)
    data = whole.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    _assert_refused(cut, "truncated")


def test_text_and_random_bytes_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("this is a radiology report, not an image\n" * 20)
    _assert_refused(text, "neither DICOM nor an image")
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(3).bytes(4096))
    _assert_refused(noise, "neither DICOM nor an image")
    _assert_refused(tmp_path / "missing.dcm", "cannot open")
    _assert_refused(tmp_path, "cannot open")


@pytest.mark.parametrize("side", [100_000, 65_535])
def test_absurd_header_fails_fast_without_allocating(tmp_path: Path, side: int) -> None:
    ds = image_dataset(gray_pixels(8, 8), bits_stored=12)
    if side > 65_535:  # Rows/Columns are US; a corrupt file can still hold a wider VR
        del ds.Rows, ds.Columns
        ds.add_new(0x00280010, "UL", side)
        ds.add_new(0x00280011, "UL", side)
    else:
        ds.Rows = ds.Columns = side
    path = save(ds, tmp_path / "huge.dcm")
    for fast in (True, False):
        tracemalloc.start()
        start = time.perf_counter()
        try:
            with pytest.raises(ImageReadError, match=rf"huge.dcm: header claims {side}x{side}"):
                read_image(path, fast=fast)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert time.perf_counter() - start < 2.0
        assert peak < 8 * 2**20


def test_truncated_and_oversized_png_are_refused(tmp_path: Path) -> None:
    Image.fromarray(gray_pixels(128, 128, bits=8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _assert_refused(tmp_path / "cut.png", "corrupt or truncated PNG")

    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )
    png += struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    (tmp_path / "bomb.png").write_bytes(png)
    _assert_refused(tmp_path / "bomb.png", "pixel limit")
    # Over our limit but under Pillow's own bomb check: refused before decoding.
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )
    png += struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    (tmp_path / "big.png").write_bytes(png)
    _assert_refused(tmp_path / "big.png", "PNG header claims 9000x9000 pixels")


# ---------------------------------------------------------------- recognising DICOM


def test_is_dicom_by_content(tmp_path: Path) -> None:
    ds = image_dataset(gray_pixels(16, 16))
    with_ext = save(ds, tmp_path / "a.dcm")
    without_ext = save(ds, tmp_path / "1.2.3.4")
    bare = save_bare(ds, tmp_path / "bare")
    assert is_dicom(with_ext) and is_dicom(without_ext) and is_dicom(bare)
    assert bare.read_bytes()[128:132] != b"DICM"
    Image.fromarray(gray_pixels(16, 16, bits=8)).save(tmp_path / "x.png")
    (tmp_path / "t.dcm").write_text("not dicom")
    assert not is_dicom(tmp_path / "x.png")
    assert not is_dicom(tmp_path / "t.dcm")
    assert not is_dicom(tmp_path / "missing")
    # Files without a preamble read like any other.
    np.testing.assert_allclose(read_image(bare), read_image(with_ext), atol=1e-6)


def test_info_and_read_dataset(tmp_path: Path) -> None:
    ds = image_dataset(gray_pixels(32, 48), bits_stored=12)
    path = save(ds, tmp_path / "x.dcm")
    _, info = load_image(path)
    assert info.path == path
    assert info.sop_instance_uid == ds.SOPInstanceUID
    assert info.study_instance_uid == ds.StudyInstanceUID
    assert info.series_instance_uid == ds.SeriesInstanceUID
    assert (info.patient_id, info.modality, info.photometric) == ("P7", "DX", "MONOCHROME2")
    assert (info.rows, info.columns, info.n_frames) == (32, 48, 1)
    assert info.transfer_syntax_uid == uid.ExplicitVRLittleEndian
    assert dicom.read_dataset(path).SOPInstanceUID == ds.SOPInstanceUID
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="t.txt: not a DICOM file"):
        dicom.read_dataset(tmp_path / "t.txt")


# ---------------------------------------------------------------- resize


def test_resize_checkerboard_does_not_alias() -> None:
    board = (np.indices((1024, 1024)).sum(axis=0) % 2).astype(np.float32)
    out = resize(board, 512)
    assert out.shape == (512, 512) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.5, atol=1e-6)
    # A non-integer factor: area weights keep it grey, where point sampling gives 0/1.
    odd = resize(board[:1000, :1000], 512)
    assert np.abs(odd - 0.5).max() < 0.15
    assert abs(float(odd.mean()) - 0.5) < 0.01


def test_resize_integer_factor_is_block_mean() -> None:
    img = np.random.default_rng(0).random((96, 64)).astype(np.float32)
    expected = img.reshape(32, 3, 32, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(resize(img, 32), expected, atol=1e-6)


def test_resize_fractional_factor_is_exact_area_mean() -> None:
    img = np.random.default_rng(1).random((100, 100)).astype(np.float32)
    # 100 -> 40: repeat each pixel twice (200) and take 5x5 block means: exact area weights.
    fine = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
    expected = fine.reshape(40, 5, 40, 5).mean(axis=(1, 3))
    np.testing.assert_allclose(resize(img, 40), expected, atol=1e-6)


def test_resize_to_rows_and_columns_is_the_exact_area_mean() -> None:
    img = np.random.default_rng(2).random((100, 60)).astype(np.float32)
    # 100 x 60 -> 40 x 24: repeat 2x each way (200 x 120), then 5x5 block means.
    fine = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
    expected = fine.reshape(40, 5, 24, 5).mean(axis=(1, 3))
    np.testing.assert_allclose(resize(img, (40, 24)), expected, atol=1e-6)
    # Integer factors per axis: block means; a mask shrinks to its covered fraction.
    mask = np.zeros((64, 96), dtype=bool)
    mask[:32, :48] = True
    np.testing.assert_array_equal(resize(mask, (2, 3)), [[1, 0.5, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="size"):
        resize(img, (0, 4))


def test_resize_upsamples_linearly_and_keeps_range() -> None:
    ramp = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    up = resize(ramp, 40)
    assert up.shape == (40, 40)
    assert 0.0 <= up.min() and up.max() <= 1.0
    assert (np.diff(up[0]) >= -1e-7).all()  # monotone along the ramp
    np.testing.assert_allclose(resize(np.full((1, 1), 0.3), 4), 0.3)
    assert resize(np.zeros((64, 128)), 32).shape == (32, 32)
    assert resize(np.zeros((32, 100)), 32).shape == (32, 32)  # one axis already right
    same = np.zeros((8, 8), dtype=np.float32)
    assert resize(same, 8) is same


def test_resize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        resize(np.zeros((4, 4, 3)), 2)
    with pytest.raises(ValueError, match="size"):
        resize(np.zeros((4, 4)), 0)


def test_deflated_dicom_reads_like_its_explicit_twin(tmp_path: Path) -> None:
    ds = image_dataset(gray_pixels(96, 80), bits_stored=12, window=(2000.0, 3000.0))
    explicit = read_image(save(ds, tmp_path / "e.dcm"))
    path = deflated(ds, tmp_path / "d.dcm")
    for fast in (True, False):
        np.testing.assert_allclose(read_image(path, fast=fast), explicit, atol=1e-6)
    img, info = load_image(path, 32)
    assert img.shape == (32, 32) and info.transfer_syntax_uid == uid.DeflatedExplicitVRLittleEndian
    assert dicom.read_dataset(path, stop_before_pixels=True).Rows == 96


_PEAK_RSS = """
import resource, sys
from ptxfast.data.dicom import ImageReadError, load_image, read_dataset
assert read_dataset(sys.argv[1], stop_before_pixels=True).Rows == 16384
try:
    load_image(sys.argv[1], 64)
except ImageReadError as err:
    print(err)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_deflate_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    import subprocess
    import sys

    # 16384² 16-bit zeros: 512 MiB of pixels in a ~510 KB file (what pydicom inflated whole).
    ds = image_dataset(gray_pixels(8, 8), bits_stored=12)
    ds.Rows = ds.Columns = 16384
    path = deflated(ds, tmp_path / "bomb.dcm", pixel_bytes=16384 * 16384 * 2)
    assert path.stat().st_size < 1_000_000
    # Through a forking shell: Linux carries ru_maxrss across exec, so a process exec'd
    # straight from pytest would report pytest's own peak.
    cmd = ["sh", "-c", '"$0" -c "$1" "$2"; exit $?', sys.executable, _PEAK_RSS, str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    message, peak_mib = res.stdout.strip().splitlines()
    assert f"{path}: header claims 16384x16384 pixels" in message
    assert int(peak_mib) < 300, f"peak RSS {peak_mib} MiB reading a {path.stat().st_size} B file"


def test_deflated_pixels_past_the_header_promise_are_refused(tmp_path: Path) -> None:
    # The header says 64x64 16-bit (8 KiB); the stream inflates to 64 MiB.
    ds = image_dataset(gray_pixels(64, 64), bits_stored=12)
    path = deflated(ds, tmp_path / "long.dcm", pixel_bytes=64 * 2**20)
    _assert_refused(path, r"inflates past the [\d,]+ bytes its header promises \(64x64")
    # Over the byte limit through its frame count alone.
    ds.NumberOfFrames = 100_000
    _assert_refused(deflated(ds, tmp_path / "frames.dcm"), "100000 frame.* over the")


@pytest.mark.parametrize("syntax", [uid.JPEGLosslessSV1, uid.JPEG2000Lossless, uid.JPEGLSLossless])
def test_compressed_frame_larger_than_its_header_is_refused(tmp_path: Path, syntax: str) -> None:
    big = save(image_dataset(gray_pixels(128, 96), bits_stored=12), tmp_path / "big.dcm", syntax)
    ds = pydicom.dcmread(big)
    ds.Rows, ds.Columns = 32, 48  # the DICOM header lies low; the codestream keeps 128x96
    ds.save_as(tmp_path / "lying.dcm")
    _assert_refused(
        tmp_path / "lying.dcm", "frame header claims 128x96 pixels, more than the 32x48"
    )
    assert read_image(big).shape == (128, 96)  # the honest file still reads
