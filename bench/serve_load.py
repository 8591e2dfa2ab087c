"""Load test of `geovit serve` on loopback: N concurrent /predict uploads, latency and errors.

Starts the real CLI server (a subprocess on 127.0.0.1, a free port) on a checkpoint (given, or a
randomly initialised `small` preset over random cells), then fires `--requests` uploads with at
most `--concurrency` in flight (httpx, async), the whole run bounded by `--timeout` seconds.
Baseline, measured in the same run: the in-process Predictor on the same photo. The server runs
one inference at a time, so the expected p50 is about concurrency x the baseline. Errors (any
non-200 or transport failure) must be 0. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from geovit.cells import CellPartition
from geovit.checkpoint import save_checkpoint
from geovit.model import GeoViT, model_config
from geovit.predictor import Predictor

HOST = "127.0.0.1"


def random_checkpoint(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 20_000)))
    lon = rng.uniform(-180, 180, lat.size)
    cells = CellPartition.build(lat, lon, t1=40, t2=1)
    torch.manual_seed(0)
    return save_checkpoint(folder / "model.pt", GeoViT(model_config("small", len(cells))), cells)


def street_photo(width: int = 640, height: int = 480) -> bytes:
    """A JPEG with photo-like statistics (smooth gradients + noise), deterministic."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([120 + 100 * x, 140 + 80 * y, 160 - 90 * x * y], axis=-1)
    pixels = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise SystemExit(f"server did not answer {url}/health within {timeout:.0f} s")


async def fire(url: str, photo: bytes, n: int, concurrency: int, timeout: float) -> dict:
    """Latencies (s) of successful requests, error descriptions, server inference ms; requests
    still unanswered when `timeout` runs out count as errors."""
    gate = asyncio.Semaphore(concurrency)
    out: dict[str, list] = {"latencies": [], "errors": [], "server_ms": []}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with gate:
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    "/predict", files={"image": (f"{i}.jpg", photo, "image/jpeg")}
                )
            except httpx.HTTPError as exc:
                out["errors"].append(f"{type(exc).__name__}: {exc}")
                return
            if r.status_code != 200:
                out["errors"].append(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            out["latencies"].append(time.perf_counter() - t0)
            out["server_ms"].append(r.json()["timing_ms"]["inference"])

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        try:
            await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(n))), timeout)
        except TimeoutError:
            done = len(out["latencies"]) + len(out["errors"])
            out["errors"] += [f"no answer within the {timeout:.0f} s bound"] * (n - done)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", type=Path, help="default: a random small-preset model")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=150.0, help="bound on the whole load run, s")
    args = ap.parse_args()

    photo = street_photo()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or random_checkpoint(Path(tmp))
        predictor = Predictor.from_checkpoint(ckpt, device="cpu")
        base = []
        for i in range(20):  # the first few calls warm up allocator and kernel caches
            t0 = time.perf_counter()
            predictor.predict(Image.open(io.BytesIO(photo)))
            if i >= 5:
                base.append(time.perf_counter() - t0)
        baseline_ms = 1e3 * statistics.median(base)
        del predictor

        port = free_port()
        url = f"http://{HOST}:{port}"
        cli = "from geovit.cli import main; main()"
        cmd = [
            sys.executable,
            "-c",
            cli,
            "serve",
            "-c",
            str(ckpt),
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_until_up(url, proc, timeout=120)
            t0 = time.perf_counter()
            res = asyncio.run(fire(url, photo, args.requests, args.concurrency, args.timeout))
            wall = time.perf_counter() - t0
            healthy = httpx.get(f"{url}/health", timeout=5).status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    latencies, errors, server_ms = res["latencies"], res["errors"], res["server_ms"]
    ms = 1e3 * np.array(latencies)
    p50, p95 = (float(np.percentile(ms, q)) for q in (50, 95)) if ms.size else (float("nan"),) * 2
    print(
        f"{len(latencies)}/{args.requests} ok, {len(errors)} errors in {wall:.1f} s "
        f"({len(latencies) / wall:.2f} req/s) at concurrency {args.concurrency}"
    )
    print(
        f"latency p50 {p50:.0f} ms, p95 {p95:.0f} ms; server inference median "
        f"{statistics.median(server_ms) if server_ms else float('nan'):.0f} ms; in-process "
        f"baseline {baseline_ms:.0f} ms; p50/baseline {p50 / baseline_ms:.1f}x"
    )
    for e in errors[:5]:
        print("error:", e)
    print(
        json.dumps(
            {
                "bench": "serve_load",
                "requests": args.requests,
                "concurrency": args.concurrency,
                "ok": len(latencies),
                "errors": len(errors),
                "healthy_after": healthy,
                "wall_s": round(wall, 2),
                "req_per_s": round(len(latencies) / wall, 3),
                "p50_ms": round(p50, 1),
                "p95_ms": round(p95, 1),
                "max_ms": round(float(ms.max()), 1) if ms.size else None,
                "server_inference_median_ms": round(statistics.median(server_ms), 1)
                if server_ms
                else None,
                "baseline_inprocess_ms": round(baseline_ms, 1),
                "p50_over_baseline": round(p50 / baseline_ms, 2),
            }
        )
    )
    if errors or not healthy:
        sys.exit(1)


if __name__ == "__main__":
    main()
