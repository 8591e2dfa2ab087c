"""Images to model inputs: read (files or zip members), decode, geolocation-safe augmentation.

Decoding uses torchvision's libjpeg-turbo decoder and resizing runs on uint8 tensors, which
together beat a Pillow pipeline (bench/decode.py); Pillow is the fallback for formats
torchvision cannot read. Augmentation never flips
horizontally by default: a mirrored street drives on the other side of the road.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as tv_decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from geovit.data.pixels import ImageSource, open_image, pil_rgb, read_source
from geovit.data.refs import IMAGE_FORMATS, read_image_bytes
from geovit.errors import GeovitError

__all__ = [
    "IMAGE_FORMATS",
    "ImageDataset",
    "build_transform",
    "collate_skip_bad",
    "decode_image",
    "load_image",
    "open_image",
    "read_image_bytes",
    "tta_transform",
]

log = logging.getLogger(__name__)

TRAIN_SCALE = (0.6, 1.0)
TRAIN_RELATIVE_RATIO = (0.8, 1.25)
# Test-time crops as (top, left, height, width) fractions of the image, in the order --tta N
# takes them: the whole image first (so N = 1 is the plain eval transform), then a centre crop,
# the four corners at the same scale and a tighter centre. Never flipped (driving side).
TTA_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 1.0, 1.0),
    (0.0625, 0.0625, 0.875, 0.875),
    (0.0, 0.0, 0.875, 0.875),
    (0.0, 0.125, 0.875, 0.875),
    (0.125, 0.0, 0.875, 0.875),
    (0.125, 0.125, 0.875, 0.875),
    (0.125, 0.125, 0.75, 0.75),
)
# No hue jitter: hue (soil, vegetation, road paint) is itself a location cue, and on tensors
# it costs ~4 ms per 224 px image, three quarters of the training transform's time.
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2}


TORCHVISION_FORMATS = ("JPEG", "MPO", "PNG", "WEBP")  # libjpeg-turbo/libpng/libwebp: faster


def decode_image(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> uint8 (3, H, W) RGB, EXIF orientation applied.

    Grayscale, RGBA, CMYK and 16-bit inputs are converted to 8-bit RGB. Any failure (empty,
    not an accepted format, damaged) is a GeovitError, so callers count it as one bad record.
    """
    img = open_image(data)
    try:
        if img.format in TORCHVISION_FORMATS:
            try:
                buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                out = tv_decode_image(buffer, mode=ImageReadMode.RGB, apply_exif_orientation=True)
                return TF.to_dtype(out, torch.uint8, scale=True)  # 16-bit PNG -> 8 bits
            except RuntimeError:
                pass  # a damaged file or a variant torchvision lacks: ask Pillow
        return pil_to_uint8(img)
    except Exception as exc:  # any decoder failure is one bad image, never a crash
        raise GeovitError(f"cannot decode image ({len(data)} bytes): {exc}") from exc
    finally:
        img.close()


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """A PIL image (any mode) -> uint8 (3, H, W) RGB with EXIF orientation applied."""
    return TF.pil_to_tensor(pil_rgb(img))


def load_image(src: ImageSource) -> torch.Tensor:
    """A PIL image, a path / "ARCHIVE.zip::member" reference, or encoded bytes -> uint8 (3,H,W)."""
    return read_source(src, decode_image, pil_to_uint8)


class AspectRandomResizedCrop:
    """RandomResizedCrop whose aspect range is relative to each image's own aspect.

    Evaluation squashes the whole (e.g. 3:2) image into S x S, so training crops must keep
    about the source aspect to see objects distorted the same way; torchvision's fixed
    absolute `ratio` cannot express that for datasets with mixed image shapes.
    """

    def __init__(self, size: int, scale: tuple[float, float], relative_ratio: tuple[float, float]):
        self.size = [size, size]
        self.scale = scale
        self.log_ratio = (math.log(relative_ratio[0]), math.log(relative_ratio[1]))

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random crop; the whole image if 10 draws do not fit."""
        for _ in range(10):
            area = torch.empty(1).uniform_(*self.scale).item()
            ratio = math.exp(torch.empty(1).uniform_(*self.log_ratio).item())
            w = round(width * math.sqrt(area * ratio))
            h = round(height * math.sqrt(area / ratio))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)).item())
                left = int(torch.randint(0, width - w + 1, (1,)).item())
                return top, left, h, w
        return 0, 0, height, width

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.crop_box(*img.shape[-2:])
        return TF.resized_crop(img, top, left, h, w, self.size, antialias=True)


def build_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    hflip: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (3, H, W) -> normalized float (3, S, S).

    Eval resizes the whole image to S x S (the design squashes 3:2 to a square). Train takes a
    random crop of 60-100% of the area at about the image's own aspect, then mild brightness,
    contrast and saturation jitter (jitter runs on floats after the crop: ~2.5x faster);
    horizontal flips only when `hflip` (they swap the side of the road traffic drives on).
    """
    to_float = v2.ToDtype(torch.float32, scale=True)
    if train:
        crop = AspectRandomResizedCrop(image_size, TRAIN_SCALE, TRAIN_RELATIVE_RATIO)
        steps: list[Callable] = [crop, to_float, v2.ColorJitter(**JITTER)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    else:
        steps = [v2.Resize((image_size, image_size), antialias=True), to_float]
    steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)


def tta_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], n: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (3, H, W) -> normalized float (n, 3, S, S): the first n TTA_BOXES, each resized
    to S x S like the eval transform (the first crop is exactly it)."""
    if not 1 <= n <= len(TTA_BOXES):
        raise GeovitError(f"--tta {n} must be between 1 and {len(TTA_BOXES)} crops")
    finish = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    )
    boxes = TTA_BOXES[:n]

    def crops(img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        size = [image_size, image_size]
        return torch.stack(
            [
                finish(TF.resized_crop(img, round(top * h), round(left * w), round(bh * h),
                                       round(bw * w), size, antialias=True))
                for top, left, bh, bw in boxes
            ]
        )  # fmt: skip

    return crops


class ImageDataset(torch.utils.data.Dataset):
    """Manifest images as model inputs; a missing or corrupt image yields None (and a warning).

    Pair with `collate_skip_bad` so one bad file costs one sample, never an epoch.
    """

    def __init__(
        self,
        refs: Sequence[str],
        labels: np.ndarray | None,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        if labels is not None and len(labels) != len(refs):
            raise GeovitError(f"{len(refs)} images but {len(labels)} labels")
        self.refs = np.asarray(refs, dtype=object)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict | None:
        ref = self.refs[index]
        try:
            image = decode_image(read_image_bytes(ref))
        except GeovitError as exc:
            log.warning("skipping image %s: %s", ref, exc)
            return None
        label = -1 if self.labels is None else int(self.labels[index])
        return {"image": self.transform(image), "label": label, "index": int(index)}


def collate_skip_bad(batch: Sequence[dict | None]) -> dict:
    """Stack the good samples; `n_bad` counts the dropped ones (the batch may end up empty)."""
    good = [b for b in batch if b is not None]
    images = torch.stack([b["image"] for b in good]) if good else torch.empty((0, 3, 0, 0))
    return {
        "image": images,
        "label": torch.tensor([b["label"] for b in good], dtype=torch.int64),
        "index": torch.tensor([b["index"] for b in good], dtype=torch.int64),
        "n_bad": len(batch) - len(good),
    }
