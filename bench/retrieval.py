"""Time the retrieval point's gallery search: flat (exact) vs IVF, at N gallery images.

`--point retrieval` searches, for each image, only the gallery images of its top-k cells
(Gallery.nearest: one FAISS search per query with an ID selector of those cells' id ranges).
This times that search on random unit embeddings (D = --dim) of N images spread over K cells
(Zipf-like cell sizes, as adaptive cells are not), queries' top-k cells drawn at random, and
checks that IVF (--nlist lists, IVF_NPROBE probed) finds the same nearest image as the exact
index. Wall times on a possibly shared machine; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from geovit.gallery import IVF_NPROBE, Gallery


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="gallery images")
    ap.add_argument("--cells", type=int, default=2_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--k", type=int, default=3, help="top cells searched per query")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    weights = 1.0 / np.arange(1, args.cells + 1)
    labels = rng.choice(args.cells, size=args.n, p=weights / weights.sum())
    emb = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    lat, lon = rng.uniform(-60, 60, args.n), rng.uniform(-180, 180, args.n)
    query = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    cells = np.stack([rng.choice(args.cells, args.k, replace=False) for _ in range(args.queries)])
    result: dict[str, object] = {k: getattr(args, k) for k in ("n", "cells", "dim", "queries", "k")}
    ids = {}
    for name, ivf in (("flat", None), (f"ivf{args.nlist}", args.nlist)):
        start = time.perf_counter()
        gallery = Gallery.build(emb, lat, lon, labels, args.cells, "bench", ivf=ivf)
        built = time.perf_counter() - start
        start = time.perf_counter()
        ids[name] = gallery.nearest(query, cells, 1)[:, 0]
        searched = time.perf_counter() - start
        result[name] = {
            "build_s": round(built, 2),
            "ms_per_query": round(1000 * searched / args.queries, 3),
        }
        print(f"{name}: build {built:.2f} s, {1000 * searched / args.queries:.3f} ms per query")
    agree = float(np.mean(ids["flat"] == ids[f"ivf{args.nlist}"]))
    result["ivf_nprobe"] = IVF_NPROBE
    result["ivf_same_nearest"] = agree
    print(f"IVF finds the exact nearest image for {agree:.1%} of queries (nprobe {IVF_NPROBE})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
