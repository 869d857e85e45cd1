"""RLE masks: hand-made vectors, round trips both ways, and every malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ptxfast.data import rle


def test_hand_made_vector() -> None:
    # Column-major flat order of this 4x3 mask: column 0 = 0 1 1 0, column 1 = 1 0 0 0,
    # column 2 = 0 0 0 1 -> runs at flat 1 (length 2), 4 (length 1), 11 (length 1).
    mask = np.array(
        [
            [0, 1, 0],
            [1, 0, 0],
            [1, 0, 0],
            [0, 0, 1],
        ],
        dtype=bool,
    )
    text = "1 2 1 1 6 1"
    assert rle.encode(mask) == text
    decoded = rle.decode(text, shape=(4, 3))
    assert decoded.dtype == bool and decoded.shape == (4, 3)
    np.testing.assert_array_equal(decoded, mask)


def test_run_crossing_a_column_and_touching_the_corners() -> None:
    # Run of 3 from flat 2 covers rows 2-3 of column 0 and row 0 of column 1; a run at
    # flat 0 and one ending on the last pixel exercise both ends.
    mask = np.zeros((4, 2), dtype=bool)
    mask[0, 0] = True
    mask[2:, 0] = True
    mask[0, 1] = True
    mask[3, 1] = True
    assert rle.encode(mask) == "0 1 1 3 2 1"
    np.testing.assert_array_equal(rle.decode("0 1 1 3 2 1", (4, 2)), mask)


def test_full_mask_and_default_shape() -> None:
    assert rle.encode(np.ones((3, 5), dtype=bool)) == "0 15"
    full = rle.decode("0 1048576")
    assert full.shape == (1024, 1024) and full.all()


def test_column_major_on_the_default_shape() -> None:
    # 1024 pixels from flat 0 fill exactly the first column, not the first row.
    mask = rle.decode("0 1024")
    assert mask[:, 0].all() and mask.sum() == 1024
    assert not mask[0, 1:].any()


@pytest.mark.parametrize("text", ["-1", " -1", "", "  ", "-1\n"])
def test_empty_encodings(text: str) -> None:
    mask = rle.decode(text, shape=(8, 6))
    assert mask.shape == (8, 6) and not mask.any()


def test_encode_empty_mask_gives_minus_one() -> None:
    assert rle.encode(np.zeros((7, 9), dtype=bool)) == "-1"


def test_non_canonical_but_valid_input_decodes() -> None:
    # A zero gap after a run joins it to the previous run; encode merges them.
    mask = rle.decode("2 1 0 2", shape=(3, 3))
    assert mask.ravel(order="F").tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert rle.encode(mask) == "2 3"


def test_encode_accepts_any_truthy_array() -> None:
    values = np.array([[0, 3], [0.5, 0]])
    assert rle.encode(values) == rle.encode(values != 0) == "1 2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd number"),
        ("5", "odd number"),
        ("1 -2", "negative"),
        ("-3 2", "negative"),
        ("1 2 -1 1", "negative"),
        ("1 2.5", "non-integer"),
        ("a b", "non-integer"),
        ("1 2 x 4", "'x'"),
        ("1e3 2", "non-integer"),
        ("3 0", "zero length"),
        ("0 1 2 0", "zero length"),
        ("0 13", "past the end"),
        ("10 3", "past the end"),
        ("0 4 0 4 0 5", "past the end"),
        ("99999999999999999999 1", "too large"),
    ],
)
def test_malformed_strings_raise_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rle.decode(text, shape=(3, 4))


def test_a_run_ending_on_the_last_pixel_is_fine() -> None:
    assert rle.decode("11 1", shape=(3, 4))[2, 3]


def test_encode_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2), dtype=bool))


def test_decode_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        rle.decode(None)  # type: ignore[arg-type]


masks = hnp.arrays(
    dtype=bool,
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
)


@settings(max_examples=200, deadline=None)
@given(masks)
def test_mask_round_trip(mask: np.ndarray) -> None:
    text = rle.encode(mask)
    assert (text == "-1") == (not mask.any())
    np.testing.assert_array_equal(rle.decode(text, shape=mask.shape), mask)


@st.composite
def canonical_strings(draw) -> tuple[str, tuple[int, int]]:
    """A canonical RLE string (first gap >= 0, later gaps >= 1, lengths >= 1) and a shape."""
    height = draw(st.integers(1, 20))
    width = draw(st.integers(1, 20))
    budget = height * width
    values: list[int] = []
    used = 0
    for i in range(draw(st.integers(0, 12))):
        gap = draw(st.integers(0 if i == 0 else 1, 6))
        length = draw(st.integers(1, 8))
        if used + gap + length > budget:
            break
        values += [gap, length]
        used += gap + length
    return (" ".join(map(str, values)) if values else "-1"), (height, width)


@settings(max_examples=200, deadline=None)
@given(canonical_strings())
def test_string_round_trip(case: tuple[str, tuple[int, int]]) -> None:
    text, shape = case
    mask = rle.decode(text, shape=shape)
    assert rle.encode(mask) == text
    pairs = [int(v) for v in text.split()] if text != "-1" else []
    assert mask.sum() == sum(pairs[1::2])


def test_big_mask_is_vectorised() -> None:
    # 512k runs in a 1024x1024 checkerboard must stay fast (no Python loop per run).
    import time

    board = (np.indices((1024, 1024)).sum(axis=0) % 2).astype(bool)
    start = time.perf_counter()
    text = rle.encode(board)
    back = rle.decode(text)
    assert time.perf_counter() - start < 5.0
    np.testing.assert_array_equal(back, board)
