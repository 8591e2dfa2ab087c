"""CPU inference speed: onnxruntime on the exported model vs torch on the checkpoint.

A randomly initialised GeoViT (preset `small` by default, or `seed`) is saved, exported with
`geovit.export.export_onnx`, and both runtimes classify the same random batches. Reported per
batch size: images/s of each (median of timed rounds after a warm-up), the ratio onnx/torch, and
the max |logit difference| (parity). Both use the same number of threads. Last line: one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from geovit.cells import CellPartition
from geovit.checkpoint import save_checkpoint
from geovit.model import GeoViT, model_config


def images_per_s(run: Callable[[], object], batch: int, seconds: float) -> float:
    """Median throughput of repeated calls (one warm-up call first)."""
    run()
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="small", choices=["small", "seed"])
    ap.add_argument("--points", type=int, default=20_000, help="random points -> cells (t1=40)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--seconds", type=float, default=5.0, help="timing per runtime and batch")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, args.points)))
    lon = rng.uniform(-180, 180, lat.size)
    cells = CellPartition.build(lat, lon, t1=40, t2=1)
    torch.manual_seed(0)
    model = GeoViT(model_config(args.preset, len(cells))).eval()
    size = model.config.image_size

    from geovit.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "model.pt", model, cells)
        t0 = time.perf_counter()
        onnx_path = export_onnx(ckpt, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - t0
        onnx_mb = onnx_path.stat().st_size / 1e6
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        feed = {session.get_inputs()[0].name: x.numpy()}

        def run_torch(x: torch.Tensor = x) -> np.ndarray:
            with torch.inference_mode():
                return model(x).numpy()

        def run_onnx(feed: dict = feed) -> np.ndarray:
            return session.run(None, feed)[0]

        diff = float(np.abs(run_torch() - run_onnx()).max())
        torch_ips = images_per_s(run_torch, batch, args.seconds)
        onnx_ips = images_per_s(run_onnx, batch, args.seconds)
        rows.append(
            {
                "batch": batch,
                "torch_img_s": round(torch_ips, 2),
                "onnx_img_s": round(onnx_ips, 2),
                "onnx_over_torch": round(onnx_ips / torch_ips, 3),
                "max_abs_logit_diff": diff,
            }
        )
        print(
            f"batch {batch:3d}: torch {torch_ips:8.1f} img/s  onnxruntime {onnx_ips:8.1f} img/s  "
            f"ratio {onnx_ips / torch_ips:.2f}x  max|dlogit| {diff:.2e}"
        )
    result = {
        "bench": "onnx_vs_torch",
        "preset": args.preset,
        "image_size": size,
        "classes": len(cells),
        "threads": args.threads,
        "export_s": round(export_s, 1),
        "onnx_mb": round(onnx_mb, 1),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "rows": rows,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
