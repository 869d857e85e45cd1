"""Comparisons of float results that hold on every CPU: pinned images, masks and values, and
pixel counts at a threshold, with a tolerance that covers the last-bit differences of the
CPU's float kernels and nothing more.

numpy picks its math kernels (sin, exp, tanh, power ...) by the CPU's SIMD level, and the
AVX-512, AVX2 and baseline kernels round differently in the last bit. Computed pixels then
land one grey level apart where a float sits on an integer boundary, and a mask gains or loses
a pixel where a field sits on its threshold. A hash of the bytes sees those as changes; these
comparisons do not, while a real change to a drawing (a pixel region brighter, a line moved by
one pixel, one more vessel, a shifted mask) still fails:

- an image is pinned by its tile sketch: per 16x16 tile, the sum of its pixels and their sum
  with fixed pseudo-random signs (modulo 2**16, so two bytes a number). Rounding moves either
  sum by at most the number of pixels it moved, so a tile may be off by `PIXEL_FLIPS`. A
  region changed by more than that fails, and so does a line moved by one pixel: the plain
  sum misses that, the signed sum sees it in all but a few tiles of the line;
- a mask is pinned by its RLE: it may differ only on the edge of the pinned mask (a pixel with
  a 4-neighbour of the other value) and in at most `MASK_FLIPS` pixels;
- numbers are compared with a relative tolerance of `REL`, everything else exactly.

The references live in one small .npz file: `save_pins` writes it, `load_pins` reads it.

Runtimes differ the same way: oneDNN, ONNX Runtime and OpenVINO pick their kernels by the CPU
and the batch, so a probability map agrees within a tolerance, and the count of its pixels
above a threshold agrees but for the pixels within that tolerance of it (`area_slack`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ptxfast.data import rle

TILE = 16
PIXEL_FLIPS = 8  # per tile: pixels that rounding may move by one grey level
MASK_FLIPS = 8  # per mask: edge pixels that a field on its threshold may flip
REL = 1e-9  # numbers: last-bit differences of a chain of float operations, with room to spare
_MOD = 1 << 16
# The signs of the second sum, the same in every tile: top bits of a PCG64 stream, which numpy
# keeps the same across releases (its bit generators' streams are fixed).
_SIGNS = 1 - 2 * (np.random.PCG64(TILE).random_raw(TILE * TILE) >> 63).astype(np.int64)


def tile_sketch(image: np.ndarray) -> np.ndarray:
    """(2, rows, cols) uint16: each 16x16 tile's pixel sum and signed sum, modulo 2**16.

    Edge tiles of an image whose side is not a multiple of 16 hold the pixels there are.
    """
    h, w = image.shape
    rows, cols = -(-h // TILE), -(-w // TILE)
    padded = np.zeros((rows * TILE, cols * TILE), dtype=np.int64)
    padded[:h, :w] = image
    tiles = padded.reshape(rows, TILE, cols, TILE)
    signed = tiles * _SIGNS.reshape(1, TILE, 1, TILE)
    return (np.stack([tiles, signed]).sum(axis=(2, 4)) % _MOD).astype(np.uint16)


def image_problems(what: str, image: np.ndarray, pinned: np.ndarray) -> list[str]:
    """What differs between `image` and its pinned tile sketch beyond rounding (empty: none)."""
    got = tile_sketch(image)
    if got.shape != pinned.shape:
        return [f"{what}: {image.shape} pixels, not the pinned image's tiles {pinned.shape[1:]}"]
    # Distance on the circle of 2**16, so a sum that wrapped still reads as a small change.
    off = (got.astype(np.int64) - pinned) % _MOD
    off = np.minimum(off, _MOD - off)
    bad = np.argwhere((off > PIXEL_FLIPS).any(axis=0))
    if not len(bad):
        return []
    r, c = bad[0]
    return [
        f"{what}: {len(bad)} of {off[0].size} {TILE}x{TILE} tiles differ beyond rounding; the "
        f"first at rows {r * TILE}-{r * TILE + TILE - 1}, columns {c * TILE}-{c * TILE + TILE - 1}"
        f" (sum off by {off[0, r, c]}, signed sum by {off[1, r, c]}; "
        f"{PIXEL_FLIPS} allowed)"
    ]


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of the other value (both sides of the mask's outline)."""
    p = np.pad(mask, 1, mode="edge")
    centre = p[1:-1, 1:-1]
    return (
        (p[:-2, 1:-1] != centre)
        | (p[2:, 1:-1] != centre)
        | (p[1:-1, :-2] != centre)
        | (p[1:-1, 2:] != centre)
    )


def mask_problems(what: str, mask: np.ndarray, pinned_rle: str) -> list[str]:
    """What differs between `mask` and its pinned RLE beyond threshold flips (empty: none)."""
    want = rle.decode(pinned_rle, mask.shape)
    diff = mask != want
    n = int(diff.sum())
    off_edge = int((diff & ~outline(want)).sum())
    if off_edge or n > MASK_FLIPS:
        return [
            f"{what}: {n} pixels differ from the pinned mask ({int(want.sum())} pixels), "
            f"{off_edge} of them off its edge; at most {MASK_FLIPS} on the edge are allowed"
        ]
    return []


def value_problems(
    what: str, got: object, want: object, slack: dict[str, float] | None = None
) -> list[str]:
    """Where `got` and `want` (JSON-like: dicts, lists, numbers, strings) differ.

    Numbers agree within `REL`; a key named in `slack` may be off by that much in absolute
    terms (a mask's pixel count, a window taken from rounded pixels).
    """
    slack = slack or {}
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{what}: keys {sorted(got)} != pinned {sorted(want)}"]
        out = []
        for k in want:
            sub = {**slack, "": slack[k]} if k in slack else slack
            out += value_problems(f"{what}.{k}", got[k], want[k], sub)
        return out
    if isinstance(want, list) and isinstance(got, list | tuple):
        if len(got) != len(want):
            return [f"{what}: {len(got)} items != pinned {len(want)}"]
        out = []
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            out += value_problems(f"{what}[{i}]", g, w, slack)
        return out
    numbers = (int, float)
    if isinstance(want, numbers) and isinstance(got, numbers) and not isinstance(got, bool):
        if math.isclose(got, want, rel_tol=REL, abs_tol=slack.get("", 0.0)):
            return []
    elif got == want:
        return []
    return [f"{what}: {got!r} != pinned {want!r}"]


def area_slack(mask: object, tol: float) -> np.ndarray:
    """Per image of an (N, ...) probability map: the pixels within `tol` of the pixel threshold,
    the most an area counted from a map that agrees within `tol` may differ by."""
    from ptxfast.models import PIXEL_THRESHOLD

    near = np.abs(np.asarray(mask, dtype=np.float64) - PIXEL_THRESHOLD) <= tol
    return near.reshape(near.shape[0], -1).sum(axis=1)


def save_pins(path: Path, doc: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write the references: `doc` (JSON-like) and the named arrays, in one compressed .npz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, _doc=np.array(json.dumps(doc, sort_keys=True)), **arrays)


def load_pins(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read what `save_pins` wrote: (doc, arrays)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "_doc"}
        return json.loads(str(z["_doc"][()])), arrays
