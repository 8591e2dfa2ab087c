"""Image pipeline: decoding against Pillow, transforms by hand, zip reading in workers."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps, features

from geovit.data.images import (
    AspectRandomResizedCrop,
    ImageDataset,
    build_transform,
    collate_skip_bad,
    decode_image,
    load_image,
    read_image_bytes,
)
from geovit.errors import GeovitError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def street_like(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: compresses like a photo, not like white noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :] * np.ones((height, 1))
    y = np.linspace(255, 0, height)[:, None] * np.ones((1, width))
    img = np.stack([x, y, (x + y) / 2], axis=-1) + rng.normal(0, 12, (height, width, 3))
    return img.clip(0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("subsampling", [0, 2])
def test_decode_matches_pillow(subsampling: int) -> None:
    data = encode(Image.fromarray(street_like()), quality=90, subsampling=subsampling)
    ours = decode_image(data).permute(1, 2, 0).numpy().astype(int)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert ours.shape == ref.shape == (64, 96, 3)
    # both sides use libjpeg-turbo here: identical; other builds may differ by IDCT rounding
    tolerance = 0 if features.check_feature("libjpeg_turbo") else 3
    assert np.abs(ours - ref).max() <= tolerance


def test_decode_converts_gray_rgba_and_other_formats_to_rgb() -> None:
    gray = Image.fromarray(street_like()[..., 0])
    out = decode_image(encode(gray, "PNG"))
    assert out.shape == (3, 64, 96) and out.dtype == torch.uint8
    for c in range(3):
        assert torch.equal(out[c], torch.from_numpy(np.array(gray)))
    rgba = Image.fromarray(np.dstack([street_like(), np.full((64, 96), 128, np.uint8)]))
    ref = torch.from_numpy(np.array(rgba.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(decode_image(encode(rgba, "PNG")), ref)
    rgb = Image.fromarray(street_like())
    bmp = decode_image(encode(rgb, "BMP"))  # torchvision cannot: the Pillow fallback does
    assert torch.equal(bmp, torch.from_numpy(street_like()).permute(2, 0, 1))


def test_decode_applies_exif_orientation_like_pillow() -> None:
    img = Image.fromarray(street_like())
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(img, quality=95, exif=exif)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    ours = decode_image(data).permute(1, 2, 0).numpy()
    assert ours.shape == ref.shape == (96, 64, 3)
    assert np.abs(ours.astype(int) - ref).max() <= 3


def test_decode_rejects_garbage_and_truncated_data() -> None:
    with pytest.raises(GeovitError, match="not an accepted format"):
        decode_image(b"definitely not an image")
    data = encode(Image.fromarray(street_like()))
    with pytest.raises(GeovitError):
        decode_image(data[: len(data) // 2])


def test_load_image_accepts_pil_path_and_bytes(tmp_path: Path) -> None:
    data = encode(Image.fromarray(street_like()), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    expected = torch.from_numpy(street_like()).permute(2, 0, 1)
    assert torch.equal(load_image(data), expected)
    assert torch.equal(load_image(tmp_path / "a.png"), expected)
    assert torch.equal(load_image(Image.open(tmp_path / "a.png")), expected)
    gray = load_image(Image.open(tmp_path / "a.png").convert("L"))
    assert gray.shape == (3, 64, 96) and torch.equal(gray[0], gray[2])


def test_eval_transform_resizes_and_normalizes_like_pillow() -> None:
    src = street_like(150, 100)
    out = build_transform(56, MEAN, STD, train=False)(torch.from_numpy(src).permute(2, 0, 1))
    assert out.shape == (3, 56, 56) and out.dtype == torch.float32
    # reference: Pillow's antialiased bilinear resize of the whole (squashed) image, then
    # (x / 255 - mean) / std by hand
    ref = np.asarray(Image.fromarray(src).resize((56, 56), Image.BILINEAR), dtype=np.float64)
    ref = (ref / 255.0 - np.array(MEAN)) / np.array(STD)
    diff = np.abs(out.permute(1, 2, 0).numpy() - ref)
    assert diff.mean() < 0.02 and diff.max() < 3 / 255 / min(STD)


def test_uniform_colour_maps_to_hand_computed_values() -> None:
    colour = (10, 128, 250)
    img = torch.tensor(colour, dtype=torch.uint8)[:, None, None].expand(3, 40, 60).contiguous()
    out = build_transform(32, MEAN, STD, train=False)(img)
    assert out.shape == (3, 32, 32)
    for c in range(3):
        expected = (colour[c] / 255.0 - MEAN[c]) / STD[c]
        assert torch.allclose(out[c], torch.tensor(expected, dtype=torch.float32), atol=1e-5)


def test_train_jitter_is_mild_and_keeps_hue() -> None:
    """Brightness/contrast/saturation only: a uniform colour keeps its channel order, and a gray
    only brightens or darkens within the brightness range (0.8-1.2)."""
    transform = build_transform(16, (0.0,) * 3, (1.0,) * 3, train=True)
    orange = torch.tensor([200, 120, 40], dtype=torch.uint8)[:, None, None].expand(3, 20, 30)
    gray = torch.full((3, 20, 30), 128, dtype=torch.uint8)
    for seed in range(20):
        torch.manual_seed(seed)
        r, g, b = transform(orange.contiguous()).mean(dim=(1, 2))
        assert r > g > b
        out = transform(gray)
        assert torch.allclose(out, out[0, 0, 0], atol=1e-5)
        assert 0.8 * 128 / 255 - 1e-4 <= out[0, 0, 0] <= 1.2 * 128 / 255 + 1e-4


def gradient_image(width: int = 150, height: int = 100) -> torch.Tensor:
    """Gray ramp, dark on the left: a flip is the only way the right side gets darker."""
    ramp = torch.linspace(0, 255, width).round().to(torch.uint8)
    return ramp[None, None, :].expand(3, height, width).contiguous()


def left_darker(out: torch.Tensor) -> bool:
    half = out.shape[-1] // 2
    return bool(out[..., :half].mean() < out[..., half:].mean())


def test_train_transform_never_flips_by_default() -> None:
    transform = build_transform(48, MEAN, STD, train=True)
    img = gradient_image()
    for seed in range(25):
        torch.manual_seed(seed)
        out = transform(img)
        assert out.shape == (3, 48, 48)
        assert left_darker(out)
    flipping = build_transform(48, MEAN, STD, train=True, hflip=True)
    results = []
    for seed in range(25):
        torch.manual_seed(seed)
        results.append(left_darker(flipping(img)))
    assert 0 < sum(results) < 25


def test_train_transform_is_seeded_and_random() -> None:
    transform = build_transform(32, MEAN, STD, train=True)
    img = torch.from_numpy(street_like()).permute(2, 0, 1).contiguous()
    torch.manual_seed(3)
    a = transform(img)
    torch.manual_seed(3)
    b = transform(img)
    c = transform(img)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_crop_keeps_area_and_aspect_near_the_source() -> None:
    crop = AspectRandomResizedCrop(32, (0.6, 1.0), (0.8, 1.25))
    torch.manual_seed(0)
    height, width = 200, 300
    for _ in range(300):
        top, left, h, w = crop.crop_box(height, width)
        assert top >= 0 and top + h <= height and left >= 0 and left + w <= width
        area = h * w / (height * width)
        relative = (w / h) / (width / height)
        assert 0.58 <= area <= 1.0
        assert 0.78 <= relative <= 1.27


def make_zip(path: Path, n: int) -> list[bytes]:
    images = [encode(Image.fromarray(street_like(seed=i)), quality=90) for i in range(n)]
    with zipfile.ZipFile(path, "w") as zf:
        for i, data in enumerate(images):
            zf.writestr(f"train/00/{i}.jpg", data)
        zf.writestr("train/00/corrupt.jpg", images[0][:100])
    return images


def test_zip_dataset_in_two_workers_skips_and_counts_bad(tmp_path: Path) -> None:
    archive = tmp_path / "00.zip"
    images = make_zip(archive, 10)
    refs = [f"{archive}::train/00/{i}.jpg" for i in range(10)]
    refs[3] = f"{archive}::train/00/corrupt.jpg"
    refs[7] = str(tmp_path / "missing.jpg")
    assert read_image_bytes(refs[0]) == images[0]  # parent now holds a cached handle
    labels = np.arange(10) * 10
    transform = build_transform(32, MEAN, STD, train=False)
    dataset = ImageDataset(refs, labels, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, num_workers=2, collate_fn=collate_skip_bad
    )
    seen, n_bad = {}, 0
    for batch in loader:
        n_bad += batch["n_bad"]
        assert batch["image"].shape[1:] == (3, 32, 32)
        for img, label, index in zip(batch["image"], batch["label"], batch["index"], strict=True):
            seen[int(index)] = (img, int(label))
    assert n_bad == 2
    assert sorted(seen) == [0, 1, 2, 4, 5, 6, 8, 9]
    for i, (img, label) in seen.items():
        assert label == 10 * i
        pil = np.array(Image.open(io.BytesIO(images[i])))
        expected = transform(torch.from_numpy(pil).permute(2, 0, 1))
        assert torch.equal(img, expected)


def test_bad_image_is_logged_and_all_bad_batch_is_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    dataset = ImageDataset([str(tmp_path / "bad.jpg")], None, build_transform(8, MEAN, STD, False))
    with caplog.at_level(logging.WARNING, logger="geovit.data.images"):
        assert dataset[0] is None
    assert "bad.jpg" in caplog.text
    batch = collate_skip_bad([None, None])
    assert batch["n_bad"] == 2 and batch["image"].shape[0] == 0 and batch["label"].shape == (0,)
    with pytest.raises(GeovitError):
        ImageDataset(["a", "b"], np.zeros(3), build_transform(8, MEAN, STD, False))


def test_empty_eps_and_any_undecodable_file_is_one_counted_bad_record(
    tmp_path: Path, ghostscript_standin: Path
) -> None:
    """Zero bytes used to crash (torch.frombuffer outside the try); EPS ran Ghostscript."""
    from conftest import eps_bytes

    good = encode(Image.fromarray(street_like()))
    files = {"good.jpg": good, "empty.jpg": b"", "drawing.jpg": eps_bytes(), "ok.png": good}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(GeovitError, match="empty"):
        decode_image(b"")
    with pytest.raises(GeovitError, match="not an accepted format"):
        decode_image(eps_bytes())
    refs = [str(tmp_path / n) for n in files]
    dataset = ImageDataset(refs, np.arange(4), build_transform(16, MEAN, STD, train=False))
    batch = collate_skip_bad([dataset[i] for i in range(4)])
    assert batch["n_bad"] == 2 and batch["index"].tolist() == [0, 3]
    assert not ghostscript_standin.exists(), "an EPS file reached Ghostscript"


def test_16_bit_png_keeps_its_brightness() -> None:
    """A 16-bit grey PNG is scaled to 8 bits (Pillow's convert('RGB') clips it to white)."""
    ramp = (np.arange(64 * 96).reshape(64, 96) * 10).astype(np.uint16)
    expected = np.round(ramp / 257.0)
    for decoded in (decode_image(encode(Image.fromarray(ramp), "PNG")),
                    load_image(Image.fromarray(ramp))):  # fmt: skip
        assert decoded.dtype == torch.uint8
        assert np.abs(decoded[0].numpy().astype(float) - expected).max() <= 1


def test_jpeg_with_too_many_scans_is_refused_before_decoding() -> None:
    """A crafted progressive JPEG repeats scans thousands of times to stall the decoder."""
    from geovit.data.pixels import MAX_JPEG_SCANS

    data = encode(Image.fromarray(street_like()), progressive=True)
    normal_scans = data.count(b"\xff\xda")
    assert 1 < normal_scans <= 12  # libjpeg's default progressive script
    assert decode_image(data).shape == (3, 64, 96)
    last_sos = data.rindex(b"\xff\xda")
    crafted = data[:last_sos] + data[last_sos:-2] * (MAX_JPEG_SCANS + 1) + data[-2:]
    with pytest.raises(GeovitError, match="scans"):
        decode_image(crafted)


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [(96, 64, 48), (640, 480, 224), (200, 300, 224), (64, 64, 224), (7, 5, 48), (150, 100, 150)],
)
def test_numpy_eval_transform_equals_the_torch_one_bit_for_bit(width, height, size) -> None:
    """The torch-free path of the ONNX predictor (pixels.load_rgb + eval_array) against
    torchvision's decode + antialiased uint8 Resize + ToDtype + Normalize: downscaling,
    upscaling, both at once and no resize, on a JPEG (EXIF-rotated) and a PNG."""
    from geovit.data.pixels import eval_array, load_rgb

    img = Image.fromarray(street_like(width, height, seed=width))
    exif = img.getexif()
    exif[0x0112] = 6
    transform = build_transform(size, MEAN, STD, train=False)
    for data in (encode(img, quality=90, exif=exif), encode(img, "PNG")):
        ref = transform(load_image(data)).numpy()
        ours = eval_array(load_rgb(data), size, MEAN, STD)
        assert ours.dtype == np.float32 and ours.shape == ref.shape
        assert np.array_equal(ours, ref)
