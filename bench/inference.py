"""CPU inference speed of both presets: single-image latency and batched throughput.

For each preset (random weights, ~2200 cells like the design's 2199) and each precision (fp32, and
bf16 autocast with channels_last tensors) this measures the model's forward pass on one image
(median latency) and on a batch (images/s), plus the end-to-end ``Predictor.predict`` latency on
JPEG bytes (decode + resize + forward + top-k) in fp32. Ratios are against fp32 single-image
throughput of the same preset, measured in the same run. The last line is one JSON object.

    uv run python bench/inference.py [--batch-size 16] [--seconds 1] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image

from geovit.cells import CellPartition
from geovit.model import PRESETS, GeoViT, model_config
from geovit.predictor import Predictor

N_CELLS = 2199


def timed(
    fn: Callable[[], object], seconds: float, min_reps: int = 3, warmup: int = 1
) -> list[float]:
    """Wall times of repeated calls: at least ``min_reps``, until ``seconds`` have been spent."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def fake_cells(n: int, seed: int = 0) -> CellPartition:
    """A real adaptive partition with about ``n`` classes over random points (only K matters)."""
    rng = np.random.default_rng(seed)
    lat, lon = rng.uniform(30, 48, 25 * n), rng.uniform(-124, -100, 25 * n)
    return CellPartition.build(lat, lon, t1=60, t2=10)


def jpeg_bytes(width: int = 512, height: int = 341, seed: int = 0) -> bytes:
    """A 3:2 noise photo, the shape of OSV-5M's street images."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bench_preset(preset: str, batch_size: int, seconds: float, photo: bytes) -> dict:
    torch.manual_seed(0)
    cells = fake_cells(N_CELLS)
    model = GeoViT(model_config(preset, len(cells))).eval()
    size = model.config.image_size
    mean, std = model.normalization
    out: dict = {"image_size": size, "classes": len(cells), "batch_size": batch_size}
    x1 = torch.randn(1, 3, size, size)
    xb = torch.randn(batch_size, 3, size, size)
    reference = None
    for precision in ("fp32", "bf16_channels_last"):
        bf16 = precision != "fp32"
        net = model.to(memory_format=torch.channels_last) if bf16 else model
        a, b = (x.contiguous(memory_format=torch.channels_last) if bf16 else x for x in (x1, xb))
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

        def forward(x: torch.Tensor, net=net, autocast=autocast) -> torch.Tensor:
            with torch.inference_mode(), autocast:
                return net(x).float()

        single = timed(lambda a=a, forward=forward: forward(a), seconds)
        batched = timed(lambda b=b, forward=forward: forward(b), seconds, min_reps=2)
        probs = torch.softmax(forward(b), dim=-1)
        if reference is None:
            reference = probs
        out[precision] = {
            "single_ms": 1000 * statistics.median(single),
            "batched_images_per_s": batch_size / statistics.median(batched),
            "top1_agreement_with_fp32": float(
                (probs.argmax(1) == reference.argmax(1)).float().mean()
            ),
            "max_abs_prob_diff_vs_fp32": float((probs - reference).abs().max()),
        }
    model = model.to(memory_format=torch.contiguous_format)
    predictor = Predictor(model, cells, mean, std, size, device="cpu")
    end_to_end = timed(lambda: predictor.predict(photo), seconds)
    out["fp32"]["predict_end_to_end_ms"] = 1000 * statistics.median(end_to_end)
    base = 1000 / out["fp32"]["single_ms"]  # images/s one at a time, fp32
    out["ratios_vs_fp32_single"] = {
        "fp32_batched": out["fp32"]["batched_images_per_s"] / base,
        "bf16_single": (1000 / out["bf16_channels_last"]["single_ms"]) / base,
        "bf16_batched": out["bf16_channels_last"]["batched_images_per_s"] / base,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    photo = jpeg_bytes()
    results = {}
    for preset in args.presets.split(","):
        r = results[preset] = bench_preset(preset, args.batch_size, args.seconds, photo)
        for precision in ("fp32", "bf16_channels_last"):
            m = r[precision]
            print(
                f"{preset:>5} {precision:<19} single {m['single_ms']:8.1f} ms   "
                f"batch {args.batch_size}: {m['batched_images_per_s']:7.1f} img/s   "
                f"top-1 agreement {m['top1_agreement_with_fp32']:.3f}"
            )
        print(
            f"{preset:>5} predict() on a JPEG: {r['fp32']['predict_end_to_end_ms']:.1f} ms; "
            + ", ".join(f"{k} x{v:.2f}" for k, v in r["ratios_vs_fp32_single"].items())
        )
    print(
        json.dumps(
            {
                "bench": "inference",
                "device": "cpu",
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
