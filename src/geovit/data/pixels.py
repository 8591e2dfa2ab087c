"""Images as pixels without torch: the allow-listed decode and the eval transform in PIL/NumPy.

The ONNX path (`geovit predict --onnx`) must not import torch, yet must feed the model exactly
what the torch Predictor feeds it. `eval_array` reproduces `build_transform(train=False)`:
torchvision resizes uint8 images (on every AVX2 CPU) with PIL's antialiased bilinear filter in
int16 fixed point, horizontal pass first, each pass rounded to uint8; `aa_weights` computes the
same weights and precision, so the pixels are equal and the floats equal to the last bit of the
float32 normalization. geovit.data.images (torch) decodes through the same `open_image` gate.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from geovit.data.refs import IMAGE_FORMATS, read_image_bytes
from geovit.errors import GeovitError

# A progressive JPEG has about 10 scans; a crafted one with thousands makes libjpeg re-run the
# whole image per scan (seconds of CPU for a few hundred KB), so more are refused unread.
MAX_JPEG_SCANS = 100
SOS_MARKER = b"\xff\xda"  # entropy-coded data stuffs 0xFF with 0x00: only markers match
MAX_WEIGHT_BITS = 22  # torch's (and PIL's) fixed-point precision cap for uint8 resampling

ImageSource = Image.Image | str | os.PathLike | bytes
T = TypeVar("T")


def open_image(data: bytes) -> Image.Image:
    """Pillow's lazy handle on encoded bytes (header parsed, pixels not decoded), restricted
    to IMAGE_FORMATS. Raises GeovitError for empty bytes or any other format; lets Pillow's
    DecompressionBombError through (the server answers it with its own status)."""
    if not data:
        raise GeovitError("the image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise GeovitError(
            f"cannot decode image ({len(data)} bytes): not an accepted format (geovit reads "
            f"{', '.join(IMAGE_FORMATS)}); convert it to JPEG or PNG"
        ) from exc
    if img.format in ("JPEG", "MPO") and (scans := data.count(SOS_MARKER)) > MAX_JPEG_SCANS:
        img.close()
        raise GeovitError(
            f"JPEG with {scans} scans, over the {MAX_JPEG_SCANS}-scan limit (a normal progressive "
            "JPEG has about 10): re-encode it"
        )
    return img


def pil_rgb(img: Image.Image) -> Image.Image:
    """A PIL image (any mode) as 8-bit RGB with its EXIF orientation applied."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L"):  # convert("RGB") would clip 16 bits to white
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).round().astype(np.uint8))
    return img.convert("RGB")


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, 3) RGB; any failure is one GeovitError."""
    img = open_image(data)
    try:
        return np.asarray(pil_rgb(img))
    except Exception as exc:  # any decoder failure is one bad image, never a crash
        raise GeovitError(f"cannot decode image ({len(data)} bytes): {exc}") from exc
    finally:
        img.close()


def read_source(
    src: ImageSource, decode: Callable[[bytes], T], from_pil: Callable[[Image.Image], T]
) -> T:
    """A PIL image, encoded bytes or a path / "ARCHIVE.zip::member" through ``decode`` (or
    ``from_pil``); an error names the file."""
    if isinstance(src, Image.Image):
        return from_pil(src)
    if isinstance(src, bytes | bytearray):
        return decode(bytes(src))
    try:
        return decode(read_image_bytes(str(src)))
    except GeovitError as exc:
        if str(src) in str(exc):  # read errors already name the file
            raise
        raise GeovitError(f"{src}: {exc}") from None


def load_rgb(src: ImageSource) -> np.ndarray:
    """`geovit.data.images.load_image` without torch: uint8 (H, W, 3) RGB."""
    return read_source(src, decode_rgb, lambda img: np.asarray(pil_rgb(img)))


def aa_weights(n_in: int, n_out: int) -> tuple[np.ndarray, int]:
    """(n_out, n_in) integer weights of antialiased bilinear resampling and their fixed-point
    precision in bits: the triangle filter widened by the downscale factor, each row
    normalized, scaled so the largest weight fits int16 (torch's uint8 kernel)."""
    scale = n_in / n_out
    support, invscale = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    center = scale * (np.arange(n_out) + 0.5)
    lo = np.maximum((center - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((center + support + 0.5).astype(np.int64), n_in)
    j = np.arange(n_in)[None, :]
    tri = np.clip(1.0 - np.abs((j - center[:, None] + 0.5) * invscale), 0.0, None)
    w = np.where((j >= lo[:, None]) & (j < hi[:, None]), tri, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    bits = 0
    while bits < MAX_WEIGHT_BITS and int(0.5 + w.max() * (1 << (bits + 1))) < (1 << 15):
        bits += 1
    return np.floor(0.5 + w * (1 << bits)), bits


def _resample(pixels: np.ndarray, weights: np.ndarray, bits: int, spec: str) -> np.ndarray:
    """One fixed-point pass: sum(pixel * weight) + half, shifted right, clipped to uint8.
    float64 holds these integer sums exactly (< 2**53), so BLAS does the integer math."""
    acc = np.einsum(spec, pixels, weights, optimize=True) + (1 << (bits - 1))
    return np.clip(np.floor(acc / (1 << bits)), 0, 255)


def resize_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3), as torchvision's antialiased uint8 Resize."""
    out = rgb.astype(np.float64)
    height, width = rgb.shape[:2]
    if width != size:
        out = _resample(out, *aa_weights(width, size), "hwc,ow->hoc")
    if height != size:
        out = _resample(out, *aa_weights(height, size), "hwc,oh->owc")
    return out.astype(np.uint8)


def eval_array(
    rgb: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """uint8 (H, W, 3) -> normalized float32 (3, S, S): the eval transform of
    `geovit.data.images.build_transform` (squash to S x S, scale to [0, 1], normalize)."""
    x = resize_uint8(rgb, size).transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None, None]
    return (x - mean32) / std32
