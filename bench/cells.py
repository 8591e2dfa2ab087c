"""Time the per-cell work of the server and the maps at K = 1k / 10k / 50k synthetic cells.

Issue 13 found `GET /cells` quadratic in the number of cells (tokens recomputed per cell) and one
`POST /predict` computing every cell's tokens and corners to draw five. This times, on a fresh
(nothing cached) partition of each size:

- cells: `partition_geojson` (what `GET /cells` serves, computed once per server);
- predict: one `POST /predict` through the FastAPI app (TestClient) with a tiny model (pool ->
  linear -> K logits): decoding, softmax over K, top-5, their polygons; the first request after
  start-up (it computes the tokens), then the median of --repeats more;
- map: `probability_map` of one softmax rendered to PNG bytes (all K cells drawn).

Cells: uniform random points on the sphere, partitioned with t1 = t2 = 1 down to level 12
(~2.4 km cells), so K is about the number of points. Linear growth shows as a constant time per
cell: the JSON's `per_cell_ratio` is (time per cell at the largest K) / (at the smallest K).
Wall times on a possibly shared machine; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import time

import matplotlib
import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

from geovit.cells import CellPartition
from geovit.figures import figure_bytes
from geovit.geojson import partition_geojson
from geovit.maps import probability_map
from geovit.predictor import Predictor
from geovit.serve import create_app

matplotlib.use("Agg")


def synthetic_cells(n: int, seed: int = 0) -> CellPartition:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    lon = rng.uniform(-180.0, 180.0, n)
    return CellPartition.build(lat, lon, t1=1, t2=1, max_level=12)


def tiny_model(k: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, k)
    )


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def photo_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def bench_size(n: int, repeats: int) -> dict:
    built = synthetic_cells(n)
    k = len(built)
    fresh = lambda: dataclasses.replace(built)  # noqa: E731 - nothing cached yet
    cells_s = min(_seconds(lambda: partition_geojson(fresh())) for _ in range(repeats))
    predictor = Predictor(tiny_model(k), fresh(), (0.5,) * 3, (0.25,) * 3, 64, device="cpu")
    files = {"image": ("p.jpg", photo_bytes(), "image/jpeg")}
    with TestClient(create_app(predictor, top_k=5)) as client:

        def post() -> None:
            assert client.post("/predict", files=files).status_code == 200

        first_s = _seconds(post)
        predict_s = statistics.median(_seconds(post) for _ in range(repeats))
    probs = np.random.default_rng(2).dirichlet(np.ones(k))
    map_cells = fresh()
    map_s = _seconds(lambda: figure_bytes(probability_map(map_cells, probs).figure))
    return {
        "points": n,
        "cells": k,
        "cells_s": cells_s,
        "predict_first_s": first_s,
        "predict_s": predict_s,
        "map_s": map_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n in args.sizes:
        row = bench_size(n, args.repeats)
        rows.append(row)
        print(
            f"K={row['cells']:>6}: /cells {row['cells_s']:.3f} s "
            f"({1e6 * row['cells_s'] / row['cells']:.1f} us/cell), /predict first "
            f"{1e3 * row['predict_first_s']:.1f} ms then {1e3 * row['predict_s']:.1f} ms, "
            f"map {row['map_s']:.2f} s ({1e6 * row['map_s'] / row['cells']:.1f} us/cell)",
            flush=True,
        )
    lo, hi = rows[0], rows[-1]
    ratio = {
        key: (hi[key] / hi["cells"]) / (lo[key] / lo["cells"])
        for key in ("cells_s", "predict_first_s", "map_s")
    }
    print(
        "time per cell, largest / smallest K (1 = linear): "
        + ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in ratio.items())
    )
    print(json.dumps({"bench": "cells", "sizes": rows, "per_cell_ratio": ratio}))


if __name__ == "__main__":
    main()
