"""Image loading throughput: our pipeline (torchvision libjpeg-turbo decode + tensor resize)
against a Pillow baseline (open, convert, resize, to tensor, normalize), in the same run.

One thread, 512x341 street-like JPEGs (OSV-5M's thumbnail size) to the 224 px eval input;
also reading the same JPEGs out of a zip archive. Last line: one JSON object.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from geovit.data.images import build_transform, decode_image, read_image_bytes

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
N_IMAGES, SIZE, ROUNDS = 64, 224, 4


def street_jpegs(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 512)[None, :, None]
    y = np.linspace(0, 1, 341)[:, None, None]
    out = []
    for _ in range(n):
        base = rng.uniform(40, 200, 3) * (0.6 + 0.4 * x) * (0.5 + 0.5 * y)
        img = (base + rng.normal(0, 18, (341, 512, 3))).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pillow_baseline(ref: str) -> torch.Tensor:
    with Image.open(ref) as im:
        small = im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    x = TF.pil_to_tensor(small).float().div_(255.0)
    return TF.normalize(x, list(MEAN), list(STD))


def rate(fn, refs: list[str]) -> float:
    """Images per second, best of ROUNDS passes (after one warm-up pass)."""
    for ref in refs:
        fn(ref)
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for ref in refs:
            fn(ref)
        best = min(best, time.perf_counter() - start)
    return len(refs) / best


def main() -> None:
    torch.set_num_threads(1)
    transform = build_transform(SIZE, MEAN, STD, train=False)
    train_transform = build_transform(SIZE, MEAN, STD, train=True)
    jpegs = street_jpegs(N_IMAGES)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, data in enumerate(jpegs):
            path = Path(tmp) / f"{i}.jpg"
            path.write_bytes(data)
            files.append(str(path))
        archive = Path(tmp) / "00.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for i, data in enumerate(jpegs):
                zf.writestr(f"train/00/{i}.jpg", data)
        members = [f"{archive}::train/00/{i}.jpg" for i in range(N_IMAGES)]

        def ours(ref: str) -> torch.Tensor:
            return transform(decode_image(read_image_bytes(ref)))

        def ours_train(ref: str) -> torch.Tensor:
            return train_transform(decode_image(read_image_bytes(ref)))

        baseline = rate(pillow_baseline, files)
        eval_files = rate(ours, files)
        eval_zip = rate(ours, members)
        train_files = rate(ours_train, files)
    result = {
        "image": "512x341 JPEG q90 -> 224x224",
        "threads": 1,
        "pillow_img_per_s": round(baseline, 1),
        "eval_img_per_s": round(eval_files, 1),
        "eval_zip_img_per_s": round(eval_zip, 1),
        "train_img_per_s": round(train_files, 1),
        "speedup_eval_vs_pillow": round(eval_files / baseline, 2),
        "speedup_zip_vs_pillow": round(eval_zip / baseline, 2),
    }
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
