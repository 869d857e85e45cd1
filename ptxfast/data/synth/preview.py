"""A preview grid of a synthetic (or real) dataset: images with their pneumothorax outlines.

Images are read the way training reads them (`ptxfast.data.dicom.load_image`), so the grid
shows what the models see, and the outlines are decoded from the dataset's own CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptxfast.data.rle import decode
from ptxfast.data.synth.layout import read_rows
from ptxfast.data.synth.plan import SynthError


def _choose(items: list[dict], n: int) -> list[dict]:
    """Up to `n` items in file order, half of them positive when there are enough."""
    pos = [it for it in items if it["rles"]]
    neg = [it for it in items if not it["rles"]]
    n_pos = min(len(pos), max(n // 2, n - len(neg)))
    chosen = pos[:n_pos] + neg[: n - n_pos]
    chosen.sort(key=lambda it: items.index(it))
    return chosen


def _draw_tile(ax, it: dict, size: int) -> None:
    """One image at `size`² with each mask's outline and a title saying how many PTX."""
    from ptxfast.data.dicom import load_image

    img, info = load_image(it["path"], size=size)
    ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="antialiased")
    shape = (info.rows, info.columns)
    for rle in it["rles"]:
        mask = decode(rle, shape).astype(np.float32)
        f = max(1, shape[0] // size)
        small = (
            mask[: f * (shape[0] // f), : f * (shape[1] // f)]
            .reshape(shape[0] // f, f, -1, f)
            .mean((1, 3))
        )
        ax.contour(
            np.linspace(0, size - 1, small.shape[1]),
            np.linspace(0, size - 1, small.shape[0]),
            small,
            [0.5],
            colors="#ff3030",
            linewidths=0.9,
        )
    label = f"PTX x{len(it['rles'])}" if len(it["rles"]) > 1 else "PTX" if it["rles"] else "no PTX"
    ax.set_title(f"{it['title']}  {label}", fontsize=7, color="#b00000" if it["rles"] else "black")


def write_preview(out_dir: Path | str, png_path: Path | str, n: int = 16, size: int = 256) -> Path:
    """Save a grid of up to `n` images of a dataset with their pneumothorax outlines.

    Half the tiles (when there are enough) show positives, so the outlines are there to see.
    Images are read the way training reads them (`ptxfast.data.dicom.load_image`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir, png_path = Path(out_dir), Path(png_path)
    _, images = read_rows(out_dir)
    chosen = _choose(list(images.values()), n)
    if not chosen:
        raise SynthError(f"{out_dir} lists no images to preview")
    cols = int(np.ceil(np.sqrt(len(chosen))))
    rows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, it in zip(axes.flat, chosen, strict=False):
        _draw_tile(ax, it, size)
    fig.tight_layout(pad=0.4)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
