"""Figures to bytes and files: the one place that encodes a matplotlib figure or a Pillow image.

Maps, the reliability diagram, explanation panels, the report's inline images and the server's
heatmap overlay all go through here, so every PNG is written the same way (and atomically).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from geovit.fileio import write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

TRIM_PAD_INCHES = 0.15


def figure_bytes(
    fig: Figure, fmt: str = "png", *, trim: bool = True, dpi: float | None = None
) -> bytes:
    """The figure encoded as ``fmt``; ``trim`` cuts the outer whitespace."""
    buf = io.BytesIO()
    tight = {"bbox_inches": "tight", "pad_inches": TRIM_PAD_INCHES} if trim else {}
    fig.savefig(buf, format=fmt, dpi=dpi if dpi is not None else "figure", **tight)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike, **options: object) -> Path:
    """Write a figure atomically, in the format its suffix names (default PNG); ``options``
    as for :func:`figure_bytes`."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return write_bytes(path, figure_bytes(fig, fmt, **options))  # type: ignore[arg-type]


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    """A Pillow image encoded as ``fmt``."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()
