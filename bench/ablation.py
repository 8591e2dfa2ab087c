"""What each of the peers' techniques buys, on the same data, budget and seed: one table.

Rows (each trained through geovit's training API, scored by geovit's evaluation on the test
split, beside baselines measured in the same run by bench/real_photos.py's code):

- ``seed``: the design's recipe (linear head over cells, cross-entropy, one partition);
- ``+haversine``: PIGEON's haversine label smoothing (tau 75 km); ``+haversine750``: the same
  with tau 750 km, the scale of cells on a few thousand photos;
- ``+hybrid``: OpenStreetView-5M's cell + offset head (answers with the top cell's centroid
  moved by its predicted offset);
- ``+multi``: a coarser partition trained at once (t1 x 4), probabilities multiplied (TIB);
- each inference option on the ``seed`` model: ``weighted`` point, ``retrieval`` (a FAISS
  gallery of the training images), ``tta`` (softmax averaged over crops);
- ``best``: the training options that beat ``seed``'s GeoScore, together, with the best
  inference option.

Trained models are kept in ``--out/ROW/`` and reused when their recorded configuration matches
(so a run interrupted by the machine picks up where it stopped). Real photos:

    uv run python bench/ablation.py --data /work/real/im2gps3k/manifest.csv --group place \\
        --exclude scene=indoor --cache /work/real/cache-256 --out /work/real/ablation

Synthetic world (no --data): ``--synthetic N`` generates one into --out. Prints the table,
then one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from geovit.cells import CellPartition
from geovit.checkpoint import load_checkpoint
from geovit.data.manifest import load_manifest
from geovit.data.synth import generate_world
from geovit.evaluation import evaluate, index_split, split_rows
from geovit.fileio import write_text
from geovit.model import model_config
from geovit.predictor import Predictor
from geovit.training import TrainConfig, train
from real_photos import baselines, load_data, point_at_cache, thresholds

# One training change per row (applied on top of the seed recipe).
TRAIN_ROWS: dict[str, dict[str, Any]] = {
    "seed": {},
    "+haversine": {"loss": "haversine"},
    # tau at the scale of these cells (hundreds of km apart on ~2k photos) instead of PIGEON's
    # 75 km, tuned for its ~50 km admin-area cells
    "+haversine750": {"loss": "haversine", "tau": 750.0},
    "+hybrid": {"head": "hybrid"},
    "+multi": {"multi": True},
}
COARSE_FACTOR = 4  # the coarse partition's t1 and t2 are the fine one's times this
WITHIN = ("1", "25", "200", "750", "2500")
COLUMNS = ("top1", "top5", "median_km", "mean_km", *(f"<{t}km" for t in WITHIN), "geoscore",
           "country", "region", "ece")  # fmt: skip


def partitions(train_rows: pd.DataFrame, t1: int, t2: int) -> tuple[CellPartition, CellPartition]:
    """(fine, coarse) cells on the training coordinates."""
    lat, lon = train_rows["latitude"].to_numpy(), train_rows["longitude"].to_numpy()
    fine = CellPartition.build(lat, lon, t1, t2)
    coarse = CellPartition.build(lat, lon, t1 * COARSE_FACTOR, t2 * COARSE_FACTOR)
    return fine, coarse


def run_config(args: argparse.Namespace, change: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides a row's trained weights (compared to reuse a finished run)."""
    return {
        "preset": args.preset,
        "image_size": args.image_size,
        "pretrained": args.pretrained,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "freeze_cnn": args.freeze_cnn,
        "seed": args.seed,
        "tau": change.get("tau", args.tau),
        "head": change.get("head", "linear"),
        "loss": change.get("loss", "ce"),
        "multi": bool(change.get("multi", False)),
    }


def train_row(
    name: str,
    cfg: dict[str, Any],
    manifest: pd.DataFrame,
    fine: CellPartition,
    coarse: CellPartition,
    args: argparse.Namespace,
) -> tuple[Path, float | None]:
    """model.pt of one row (trained now, or reused), and the seconds training took."""
    out = Path(args.out) / name
    stamp = out / "bench_config.json"
    if (out / "model.pt").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == cfg:
        print(f"{name}: reusing {out / 'model.pt'}", flush=True)
        return out / "model.pt", None
    extra = [coarse] if cfg["multi"] else []
    mcfg = model_config(
        cfg["preset"], len(fine), image_size=cfg["image_size"], pretrained=cfg["pretrained"],
        head=cfg["head"], extra_classes=[len(c) for c in extra],
    )  # fmt: skip
    tcfg = TrainConfig(
        epochs=cfg["epochs"],
        freeze_epochs=0,
        # the CNN frozen from the start (stage "vit"): its ImageNet features are kept and the
        # budget goes to the ViT and heads, the parts the rows differ in
        cnn_refreeze_epoch=0 if cfg["freeze_cnn"] else cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        scheduler="cosine",
        warmup_epochs=0.5,
        loss=cfg["loss"],
        tau=cfg["tau"],
        workers=args.workers,
        accelerator="cpu" if args.cpu else "auto",
        seed=cfg["seed"],
    )
    start = time.perf_counter()
    result, _ = train(
        manifest, fine, out, mcfg, tcfg, progress=False, notify=print, overwrite=True,
        extra_cells=extra,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    write_text(stamp, json.dumps(cfg, indent=2))
    print(f"{name}: trained in {seconds:.0f} s, kept {result.kept}", flush=True)
    return result.model_path, seconds


def row_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """The table's columns from an evaluate() dict."""
    acc, dist = m["cell_accuracy"]["all_images"], m["distance"]
    places = m.get("place_accuracy", {})
    return {
        "top1": acc.get("top1"),
        "top5": acc.get("top5"),
        "median_km": dist["median_km"],
        "mean_km": dist["mean_km"],
        **{f"<{t}km": dist["accuracy_within_km"][t] for t in WITHIN},
        "geoscore": m["geoscore_mean"],
        "country": places.get("country", {}).get("accuracy"),
        "region": places.get("region", {}).get("accuracy"),
        "ece": m["calibration"]["ece"],
    }


def score(
    model: Path, manifest: pd.DataFrame, split: str, args: argparse.Namespace, **options: Any
) -> dict[str, Any]:
    """geovit's evaluation of one model with inference ``options`` (Predictor.configure)."""
    predictor = Predictor.from_checkpoint(model, device="cpu" if args.cpu else None)
    predictor.configure(**options)
    m = evaluate(predictor, manifest, split, batch_size=64, workers=args.workers, ks=(1, 5))
    return row_metrics(m)


def gallery_of(model: Path, manifest: pd.DataFrame, args: argparse.Namespace) -> Path:
    """The retrieval gallery (geovit index) of a model over the training split, made once."""
    path = model.parent / "gallery.faiss"
    if not path.is_file():
        predictor = Predictor.from_checkpoint(model, device="cpu" if args.cpu else None)
        index_split(predictor, manifest, "train", batch_size=64, workers=args.workers).save(path)
    return path


def default_point(model: Path) -> str:
    """What a model answers with by default: its hybrid head's offset, else the top cell."""
    return "hybrid" if load_checkpoint(model).config.head == "hybrid" else "top1"


def inference_options(model: Path, manifest: pd.DataFrame, args) -> dict[str, dict[str, Any]]:
    """Each inference option of the issue, as Predictor.configure arguments."""
    base = default_point(model)
    return {
        "weighted": {"point": "weighted"},
        "retrieval": {"point": "retrieval", "index": gallery_of(model, manifest, args)},
        f"tta{args.tta}": {"point": base, "tta": args.tta},
    }


def scored_row(model, manifest, args, **options) -> dict[str, Any]:
    """Val and test metrics of one model and inference configuration."""
    return {s: score(model, manifest, s, args, **options) for s in ("val", "test")}


def table(rows: dict[str, dict[str, Any]], baseline: dict[str, Any]) -> str:
    """The Markdown table: baselines, then every row's test metrics."""

    def fmt(key: str, v: Any) -> str:
        if v is None:
            return "-"
        if key in ("median_km", "mean_km", "geoscore"):
            return f"{v:.0f}"
        if key == "ece":
            return f"{v:.3f}"
        return f"{100 * v:.1f}%"

    head = "| row (test) | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, b in baseline.items():
        cols = {**b, **{f"<{t}km": b.get(f"within_{t}km") for t in WITHIN}}
        cols["country"] = b.get("country_acc")
        lines.append(
            f"| baseline: {name} | "
            + " | ".join(fmt(c, cols.get(c)) for c in COLUMNS if c not in ("region", "ece"))
            + " | - | - |"
        )
    for name, r in rows.items():
        t = r["test"]
        lines.append(f"| {name} | " + " | ".join(fmt(c, t.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def load_data_any(args: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Real photos (--data, split by --group) or a synthetic world generated into --out."""
    if args.data:
        manifest, info = load_data(args)
        if args.cache:
            point_at_cache(manifest, Path(args.cache), args.cache_size, args.threads)
        return manifest, info
    world = Path(args.out) / "world"
    if not world.is_dir():
        generate_world(world, n=args.synthetic, seed=args.seed)
    manifest, report = load_manifest(world, val_fraction=0.1, seed=args.seed)
    info = {"synthetic": f"{args.synthetic} images, seed {args.seed}", "read": report.n_read}
    info["rows"] = {s: int((manifest["split"] == s).sum()) for s in ("train", "val", "test")}
    return manifest, info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="real photos (a table geovit reads); default: synthetic")
    ap.add_argument("--synthetic", type=int, default=3000, help="synthetic world size")
    ap.add_argument("--group", help="column whose groups never straddle a split (e.g. place)")
    ap.add_argument("--exclude", action="append", default=[], help="drop rows COLUMN=VALUE")
    ap.add_argument("--cache", help="folder for pre-resized copies (outside the repo)")
    ap.add_argument("--cache-size", type=int, default=256)
    ap.add_argument("--out", required=True, help="folder of the runs (outside the repo)")
    ap.add_argument("--t1", type=int)
    ap.add_argument("--t2", type=int)
    ap.add_argument("--preset", default="lite")
    ap.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--freeze-cnn", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--tau", type=float, default=75.0)
    ap.add_argument("--tta", type=int, default=4, help="crops of the tta row")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--rows", help="comma-separated training rows to run (default: all)")
    ap.add_argument("--train-only", action="store_true", help="train the rows, score nothing")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    manifest, info = load_data_any(args)
    train_rows, test = split_rows(manifest, "train"), split_rows(manifest, "test")
    t1, t2 = thresholds(len(train_rows), args.t1, args.t2)
    fine, coarse = partitions(train_rows, t1, t2)
    info["cells"] = {"t1": t1, "t2": t2, "fine": len(fine), "coarse": len(coarse)}
    print(json.dumps(info), flush=True)
    wanted = args.rows.split(",") if args.rows else list(TRAIN_ROWS)
    models: dict[str, Path] = {}
    seconds: dict[str, float | None] = {}
    for name in wanted:
        cfg = run_config(args, TRAIN_ROWS[name])
        models[name], seconds[name] = train_row(name, cfg, manifest, fine, coarse, args)
    result: dict[str, Any] = {"data": info, "train_seconds": seconds}
    if args.train_only:
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result))
        return result
    rows: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        rows[name] = scored_row(model, manifest, args, point=default_point(model))
        print(name, json.dumps(rows[name]["test"]), flush=True)
    # inference options on the seed model; the best one chosen on val
    for option, kw in inference_options(models["seed"], manifest, args).items():
        rows[f"seed + {option}"] = scored_row(models["seed"], manifest, args, **kw)
        print(option, json.dumps(rows[f"seed + {option}"]["test"]), flush=True)
    # the best combination: every training change that beat seed on val GeoScore, together,
    # then every inference option that beat the combination's default point on val
    seed_val = rows["seed"]["val"]["geoscore"]
    helped = [n for n in wanted if n != "seed" and rows[n]["val"]["geoscore"] > seed_val]
    change = {k: v for n in helped for k, v in TRAIN_ROWS[n].items()}
    combo = "".join(helped) if len(helped) > 1 else "seed" if not helped else helped[0]
    if len(helped) > 1:
        cfg = run_config(args, change)
        models[combo], seconds[combo] = train_row(combo, cfg, manifest, fine, coarse, args)
        rows[combo] = scored_row(models[combo], manifest, args, point=default_point(models[combo]))
    best_name, best = combo, rows[combo]
    for option, kw in inference_options(models[combo], manifest, args).items():
        name = f"{combo} + {option}"
        candidate = rows.get(f"seed + {option}") if combo == "seed" else None
        candidate = candidate or scored_row(models[combo], manifest, args, **kw)
        if candidate["val"]["geoscore"] > best["val"]["geoscore"]:
            best_name, best = name, candidate
    rows[f"best ({best_name}, chosen on val)"] = best
    result["rows"] = rows
    result["baselines"] = baselines(fine, train_rows, test, args.draws, args.seed)
    result["table"] = table(rows, result["baselines"])
    write_text(Path(args.out) / "ablation.json", json.dumps(result, indent=2) + "\n")
    print(result["table"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
