"""Does geovit learn from real photos? One training run against trivial baselines, in one process.

Takes any dataset geovit reads (a table, OSV-5M, OSV-Mini) with its own split or a grouping
column (`--group place`: whole groups go to train/val/test, seeded), optionally drops rows
(`--exclude scene=indoor`), pre-resizes the images once into a cache folder outside the repo
(decoding 1024 px Flickr JPEGs is the CPU cost of every epoch otherwise), builds cells on the
train split, trains one configuration with a fixed budget through geovit's training API and
evaluates on the test split with geovit's evaluation code. The baselines are scored by the same
`GeoMetrics` on the same test images:

- most_common: always the training set's most common cell (top-k: the k most common);
- mean_point: always the spherical mean of the training coordinates (top-1: its cell, if any);
- random_prior: a cell drawn from the training prior per image (Gumbel-max, so top-5 is a draw
  without replacement), averaged over `--draws` seeded draws.

With `--every-epoch` each epoch's weights are kept (in the run folder only) and scored on val and
test, to see which validation monitor would have kept the best test epoch.

    uv run python bench/real_photos.py --data /work/real/im2gps3k/manifest.csv --group place \\
        --exclude scene=indoor --cache /work/real/cache-256 --out /work/real/runs/small \\
        --preset small --no-pretrained --epochs 6 --image-size 160

Without `--data` it prints a JSON line saying it was skipped (`make bench` has no real photos).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from geovit.cells import CellPartition
from geovit.checkpoint import load_checkpoint
from geovit.data.manifest import load_manifest, pick_groups, read_image_bytes
from geovit.errors import GeovitError
from geovit.evaluation import evaluate, split_rows
from geovit.fileio import write_bytes, write_text
from geovit.geo import spherical_mean
from geovit.metrics import GeoMetrics, ScoredBatch, top_cell_points
from geovit.model import model_config
from geovit.monitor import Monitor
from geovit.predictor import Predictor
from geovit.training import TrainConfig, train

FRACTIONS = (0.7, 0.1, 0.2)  # train / val / test share of the groups' rows
WITHIN_KM = ("25", "200", "750", "2500")
JPEG_QUALITY = 90


# ------------------------------------------------------------------------------ data


def cached_image(ref: str, cache: Path, short_side: int) -> str:
    """Path of `ref` resized to `short_side` (JPEG, no EXIF) in `cache`, made once."""
    out = cache / f"{hashlib.sha1(ref.encode()).hexdigest()[:20]}.jpg"
    if not out.is_file():
        with Image.open(io.BytesIO(read_image_bytes(ref))) as im:
            im.draft("RGB", (short_side, short_side))  # JPEG DCT scaling: decode less
            im = im.convert("RGB")
            scale = short_side / min(im.size)
            if scale < 1:
                size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                im = im.resize(size, Image.BICUBIC, reducing_gap=2.0)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=JPEG_QUALITY)
        write_bytes(out, buf.getvalue())
    return str(out)


def point_at_cache(manifest: pd.DataFrame, cache: Path, short_side: int, threads: int) -> float:
    """Replace every image by its cached copy in place; returns the seconds it took."""
    start = time.perf_counter()
    refs = manifest["image"].tolist()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        manifest["image"] = list(pool.map(lambda r: cached_image(r, cache, short_side), refs))
    return time.perf_counter() - start


def parse_filters(specs: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for spec in specs:
        col, sep, value = spec.partition("=")
        if not sep or not col:
            raise GeovitError(f"--exclude {spec!r}: write COLUMN=VALUE, e.g. scene=indoor")
        pairs.append((col, value))
    return pairs


def group_split(groups: pd.Series, seed: int) -> np.ndarray:
    """train/val/test per row with whole groups on one side (geovit's pick_groups, seeded)."""
    codes, _ = pd.factorize(groups)
    rng = np.random.default_rng(seed)
    split = np.full(len(codes), "train", dtype=object)
    test = pick_groups(codes, FRACTIONS[2], rng)
    split[test] = "test"
    rest = ~test
    val = np.zeros(len(codes), dtype=bool)
    val[rest] = pick_groups(codes[rest], FRACTIONS[1] / (1 - FRACTIONS[2]), rng)
    split[val] = "val"
    return split


def load_data(args: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The manifest with the bench's filter and split applied, and what was done to it."""
    filters = parse_filters(args.exclude)
    keep = [c for c, _ in filters] + ([args.group] if args.group else [])
    manifest, report = load_manifest(
        args.data,
        keep_columns=keep,
        val_fraction=0.0 if args.group else 0.1,
        test_fraction=0.0 if args.group else 0.1,
        seed=args.seed,
    )
    info: dict[str, Any] = {"read": report.n_read, "dropped_by_reader": report.dropped}
    for col, value in filters:
        bad = manifest[col] == value
        info[f"excluded {col}={value}"] = int(bad.sum())
        manifest = manifest[~bad]
    manifest = manifest.reset_index(drop=True)
    if args.group:
        manifest["split"] = group_split(manifest[args.group], args.seed)
        n_groups = manifest[args.group].nunique()
        info["split"] = f"by {args.group}, {n_groups} groups, seed {args.seed}"
    else:
        info["split"] = "; ".join(["the data's own split", *report.notes])
    info["rows"] = {s: int((manifest["split"] == s).sum()) for s in ("train", "val", "test")}
    return manifest, info


def thresholds(n_train: int, t1: int | None, t2: int | None) -> tuple[int, int]:
    """t1/t2 scaled to a small dataset unless given: t1 = n/25 (>= 10), t2 = t1/5 (>= 2).

    geovit's defaults (100/20) suit OSV-Mini's 116k photos; on ~1.7k photos they would leave a
    handful of continent-sized cells.
    """
    t1 = t1 or max(10, round(n_train / 25))
    return t1, t2 if t2 is not None else max(2, round(t1 / 5))


# --------------------------------------------------------------------------- metrics


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """The numbers the bench compares, from a GeoMetrics/evaluate dict."""
    acc = m["cell_accuracy"]["all_images"]
    within = m["distance"]["accuracy_within_km"]
    return {
        "top1": acc.get("top1"),
        "top5": acc.get("top5"),
        "median_km": m["distance"]["median_km"],
        "mean_km": m["distance"]["mean_km"],
        **{f"within_{t}km": within[t] for t in WITHIN_KM},
        "geoscore": m["geoscore_mean"],
        "country_acc": m.get("place_accuracy", {}).get("country", {}).get("accuracy"),
    }


def score_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    centroids: tuple[np.ndarray, np.ndarray],
    ks: tuple[int, ...] = (1, 5),
) -> dict[str, Any]:
    """GeoMetrics of one fixed set of logits (true places geocoded like evaluate does)."""
    metrics = GeoMetrics(*centroids, ks=ks, place_levels=("country",))
    pred = top_cell_points(logits, *centroids)
    metrics.update(ScoredBatch.from_logits(logits, labels, lat, lon, *pred))
    return headline(metrics.compute())


def baselines(
    cells: CellPartition, train: pd.DataFrame, test: pd.DataFrame, draws: int, seed: int
) -> dict[str, Any]:
    """most_common, mean_point and random_prior on the test rows (see the module docstring)."""
    lat = test["latitude"].to_numpy(np.float64)
    lon = test["longitude"].to_numpy(np.float64)
    labels = cells.assign(lat, lon)
    train_labels = cells.assign(train["latitude"].to_numpy(), train["longitude"].to_numpy())
    counts = np.bincount(train_labels[train_labels >= 0], minlength=len(cells))
    # ties broken toward the lower class index, as argmax does (a tie would not count as a hit)
    log_prior = np.log(np.maximum(counts, 1e-12) / counts.sum()) - 1e-9 * np.arange(len(cells))
    centroids = (cells.centroid_lat, cells.centroid_lon)
    prior_logits = np.broadcast_to(log_prior, (len(test), len(cells)))
    out: dict[str, Any] = {"most_common": score_logits(prior_logits, labels, lat, lon, centroids)}

    m_lat, m_lon = spherical_mean(train["latitude"].to_numpy(), train["longitude"].to_numpy())
    mean_cell = int(cells.assign(np.array([m_lat]), np.array([m_lon]))[0])
    in_mean_cell = np.where((labels == mean_cell) & (mean_cell >= 0), 0, -1)
    point = score_logits(
        np.zeros((len(test), 1)), in_mean_cell, lat, lon, (np.array([m_lat]), np.array([m_lon])),
        ks=(1,),
    )  # fmt: skip
    out["mean_point"] = {**point, "top5": None, "lat": m_lat, "lon": m_lon}

    rng = np.random.default_rng(seed)
    gumbel = (rng.gumbel(size=prior_logits.shape) for _ in range(draws))
    runs = [score_logits(prior_logits + g, labels, lat, lon, centroids) for g in gumbel]
    out["random_prior"] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    out["random_prior"]["draws"] = draws
    return out


def ratios(model: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """model / baseline for every shared metric (distances: < 1 is better; the rest: > 1)."""
    out: dict[str, Any] = {}
    for name, b in base.items():
        out[name] = {
            k: (model[k] / b[k] if model.get(k) is not None and b.get(k) else None)
            for k in ("top1", "top5", "median_km", "within_200km", "within_750km", "geoscore")
            if isinstance(b.get(k), float)
        }
    return out


# -------------------------------------------------------------------------- training


class EveryEpoch(ModelCheckpoint):
    """Keeps every epoch's weights (``epochNN.ckpt``), beside geovit's own best/last."""

    def __init__(self, folder: Path) -> None:
        super().__init__(
            dirpath=folder, filename="epoch{epoch:02d}", auto_insert_metric_name=False,
            monitor=None, save_top_k=-1, every_n_epochs=1, save_weights_only=True,
        )  # fmt: skip

    @property
    def state_key(self) -> str:
        return "bench_every_epoch"  # geovit's last-checkpoint callback has the default key


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """ModelConfig fields given on the command line (arch/cnn/vit only when given)."""
    out: dict[str, Any] = {"pretrained": args.pretrained}
    for name in ("image_size", "arch", "cnn", "vit", "cnn_weights", "vit_weights", "dropout"):
        value = getattr(args, name)
        if value is not None:
            out[name] = value
    return out


def train_run(
    args: argparse.Namespace, manifest: pd.DataFrame, cells: CellPartition
) -> tuple[Any, Path]:
    """geovit's training; returns (TrainResult, folder of the per-epoch checkpoints)."""
    mcfg = model_config(args.preset, len(cells), **model_overrides(args))
    tcfg = TrainConfig(
        epochs=args.epochs,
        freeze_epochs=args.freeze_epochs,
        cnn_refreeze_epoch=args.cnn_refreeze_epoch
        if args.cnn_refreeze_epoch is not None
        else args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        scheduler=args.scheduler,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        workers=args.workers,
        accelerator="cpu" if args.cpu else "auto",
        seed=args.seed,
        **({"monitor": args.monitor} if args.monitor else {}),
    )
    epochs_dir = Path(args.out) / "epochs"
    if args.overwrite:
        shutil.rmtree(epochs_dir, ignore_errors=True)  # the bench's own files; geovit clears its
    callbacks = [EveryEpoch(epochs_dir)] if args.every_epoch else []
    result, _ = train(
        manifest, cells, args.out, mcfg, tcfg, progress=False, notify=print, callbacks=callbacks,
        overwrite=args.overwrite,
    )  # fmt: skip
    return result, epochs_dir


def score_checkpoint(path: Path, manifest: pd.DataFrame, args: argparse.Namespace) -> dict:
    """geovit's evaluation of one checkpoint on the test split."""
    predictor = Predictor.from_checkpoint(path, device="cpu" if args.cpu else None)
    m = evaluate(predictor, manifest, "test", batch_size=64, workers=args.workers, ks=(1, 5))
    return {**headline(m), "cross_entropy": m["cross_entropy"]}


def per_epoch(epochs_dir: Path, manifest: pd.DataFrame, args: argparse.Namespace) -> dict:
    """Val metrics logged by training and test metrics of every epoch's weights, and the epoch
    each monitor (geovit.monitor) would have kept."""
    rows = []
    for path in sorted(epochs_dir.glob("epoch*.ckpt")):
        ckpt = load_checkpoint(path)
        val = ckpt.train.get("val", {})
        row = {
            "epoch": ckpt.train.get("epoch"),
            "stage": ckpt.train.get("stage"),
            **{m.value: val.get(m.value) for m in Monitor},
            "test": score_checkpoint(path, manifest, args),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not rows:
        return {"epochs": []}
    best_test = max(rows, key=lambda r: r["test"]["geoscore"])["epoch"]
    kept = {}
    for monitor in Monitor:
        pick = (min if monitor.mode == "min" else max)(rows, key=lambda r, m=monitor: r[m.value])
        kept[monitor.value] = {"epoch": pick["epoch"], "test": pick["test"]}
    return {
        "epochs": rows,
        "best_test_epoch_by_geoscore": best_test,
        "best_test_epoch_by_top1": max(rows, key=lambda r: r["test"]["top1"])["epoch"],
        "best_test_epoch_by_median": min(rows, key=lambda r: r["test"]["median_km"])["epoch"],
        "kept_by_monitor": kept,
    }


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="dataset geovit reads (table, OSV-5M, OSV-Mini)")
    ap.add_argument("--group", help="column whose groups never straddle a split (e.g. place)")
    ap.add_argument("--exclude", action="append", default=[], help="drop rows COLUMN=VALUE")
    ap.add_argument("--cache", help="folder for pre-resized copies (outside the repo)")
    ap.add_argument("--cache-size", type=int, default=256, help="short side of cached images")
    ap.add_argument("--out", help="run folder (checkpoints, logs, result.json)")
    ap.add_argument("--t1", type=int, help="cell split threshold (default: scaled to data)")
    ap.add_argument("--t2", type=int, help="cell drop threshold (default: t1 / 5)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--arch", help="hybrid, cnn or vit (where geovit has the option)")
    ap.add_argument("--cnn", help="timm CNN name (overrides the preset's)")
    ap.add_argument("--vit", help="timm ViT name (overrides the preset's)")
    ap.add_argument("--cnn-weights")
    ap.add_argument("--vit-weights")
    ap.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--dropout", type=float)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--freeze-epochs", type=int, default=0, help="heads-only epochs (stage 0)")
    ap.add_argument("--cnn-refreeze-epoch", type=int, help="stage 2 start (default: never)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--scheduler", default="cosine", choices=("plateau", "cosine"))
    ap.add_argument("--warmup-epochs", type=float, default=0.5)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: fastest on a shared CPU)"
    )
    ap.add_argument("--cpu", action="store_true", help="train and evaluate on the CPU")
    ap.add_argument("--seed", type=int, default=0, help="split, cells draw and training seed")
    ap.add_argument("--draws", type=int, default=20, help="random_prior draws averaged")
    ap.add_argument("--monitor", help="val metric that picks model.pt (default: geovit's)")
    ap.add_argument("--every-epoch", action="store_true", help="score each epoch's weights")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    ap.add_argument("--baselines-only", action="store_true", help="no training")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not args.data:
        result = {"skipped": "no --data given (real photos are not in the repo; see the docstring)"}
        print(json.dumps(result))
        return result
    if not args.baselines_only and not args.out:
        raise GeovitError("--out is required to train: a run folder outside the repo")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    manifest, info = load_data(args)
    if args.cache:
        info["cache_seconds"] = round(
            point_at_cache(manifest, Path(args.cache), args.cache_size, args.threads), 1
        )
        info["cache"] = f"{args.cache} (short side {args.cache_size} px)"
    train = split_rows(manifest, "train")
    test = split_rows(manifest, "test")
    t1, t2 = thresholds(len(train), args.t1, args.t2)
    cells = CellPartition.build(train["latitude"].to_numpy(), train["longitude"].to_numpy(), t1, t2)
    labels = cells.assign(manifest["latitude"].to_numpy(), manifest["longitude"].to_numpy())
    info["cells"] = {
        "t1": t1,
        "t2": t2,
        "n_cells": len(cells),
        "outside_cells": {
            s: int(((manifest["split"] == s) & (labels < 0)).sum()) for s in info["rows"]
        },
    }
    result: dict[str, Any] = {"data": info}
    result["baselines"] = baselines(cells, train, test, args.draws, args.seed)
    if not args.baselines_only:
        t0 = time.perf_counter()
        run, epochs_dir = train_run(args, manifest, cells)
        result["train_seconds"] = round(time.perf_counter() - t0, 1)
        result["config"] = {
            k: v for k, v in vars(args).items() if k not in ("data", "cache", "out", "exclude")
        }
        result["kept"] = {"path": str(run.model_path), **run.kept, "val": run.best}
        model = score_checkpoint(run.model_path, manifest, args)
        result["model"] = model
        result["last_epoch"] = score_checkpoint(run.last_ckpt, manifest, args)
        result["ratios"] = ratios(model, result["baselines"])
        mean_median = result["baselines"]["mean_point"]["median_km"]
        result["target"] = {
            "median_vs_mean_point": model["median_km"] / mean_median,
            "median_at_most_0.75x_mean_point": model["median_km"] <= 0.75 * mean_median,
            "top1_above_most_common": model["top1"] > result["baselines"]["most_common"]["top1"],
        }
        if args.every_epoch:
            result["per_epoch"] = per_epoch(epochs_dir, manifest, args)
        write_text(Path(args.out) / "result.json", json.dumps(result, indent=2) + "\n")
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
