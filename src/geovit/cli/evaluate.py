"""CLI commands: `geovit evaluate`, `geovit calibrate` and `geovit predict`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from geovit.cli._app import app
from geovit.cli._common import (
    BATCH_SIZE,
    CACHE_DIR,
    CHECKPOINT,
    DATA,
    DATA_FORMAT,
    ENCODING,
    IMAGE_COL,
    IMAGE_TEMPLATE,
    LAT_COL,
    LON_COL,
    SEP,
    SPLIT_SEED,
    THREADS,
    VAL_FRACTION,
    VAL_SPLIT,
    WORKERS,
    TableColumns,
    console,
    err_console,
    friendly,
    load_split_manifest,
    set_threads,
    track,
)
from geovit.errors import GeovitError
from geovit.fileio import ensure_writable

if TYPE_CHECKING:
    from geovit.prediction import Prediction, PredictorBase

FORMATS = ("table", "json", "geojson")


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise GeovitError(
            f"--top-k {text!r} must be positive integers separated by commas, e.g. 1,3,5"
        )
    return ks


@app.command()
@friendly
def evaluate(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    split: str = typer.Option("test", help="Which split to score: test, val or train."),
    top_k: str = typer.Option("1,3,5", "--top-k", help="Cell accuracies to report, e.g. 1,3,5,10."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for metrics.json, metrics.md, reliability.png."
    ),
    places: bool = typer.Option(
        True, help="Country/region/sub-region/city accuracy (offline geocoder)."
    ),
    batch_size: int = BATCH_SIZE,
    workers: int = WORKERS,
    threads: int = THREADS,
    fmt: str = DATA_FORMAT,
    image_col: str = IMAGE_COL,
    lat_col: str = LAT_COL,
    lon_col: str = LON_COL,
    image_template: str = IMAGE_TEMPLATE,
    sep: str = SEP,
    encoding: str = ENCODING,
    val_fraction: float = VAL_FRACTION,
    val_split: str = VAL_SPLIT,
    split_seed: int = SPLIT_SEED,
    cache_dir: Path = CACHE_DIR,
) -> None:
    """Score a checkpoint on one split: cell accuracy, distances, places, calibration."""
    from geovit.evaluation import evaluate as run_evaluation
    from geovit.evaluation import split_rows, summary_tables, write_outputs
    from geovit.predictor import Predictor

    ks = _parse_ks(top_k)
    ensure_writable(out)
    set_threads(threads, workers)
    predictor = Predictor.from_checkpoint(checkpoint)
    columns = TableColumns(image_col, lat_col, lon_col, image_template, sep, encoding)
    manifest, _ = load_split_manifest(
        data, fmt, val_fraction, val_split, split_seed, columns, cache_dir=cache_dir
    )
    with track(f"evaluating {split}", len(split_rows(manifest, split))) as advance:
        metrics = run_evaluation(
            predictor,
            manifest,
            split,
            batch_size=batch_size,
            workers=workers,
            ks=ks,
            places=places,
            progress=advance,
        )
    metrics["checkpoint"] = str(checkpoint)
    for title, header, rows in summary_tables(metrics):
        table = Table(*header, title=title, title_justify="left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"distances: {metrics['distance']['convention']}", highlight=False)
    paths = write_outputs(metrics, out, title=f"Evaluation of {checkpoint.name} on {split}")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()), highlight=False)


@app.command()
@friendly
def calibrate(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    split: str = typer.Option("val", help="Split to fit the temperature on (never test)."),
    check_split: str = typer.Option(
        "val", help="Split on which ECE/NLL before and after are also reported."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Write the calibrated checkpoint here (the original is kept)."
    ),
    in_place: bool = typer.Option(
        False, "--in-place", help="Rewrite CHECKPOINT with the fitted temperature."
    ),
    max_images: int = typer.Option(
        20_000, help="Fit on a seeded sample of at most this many images."
    ),
    batch_size: int = BATCH_SIZE,
    workers: int = WORKERS,
    threads: int = THREADS,
    fmt: str = DATA_FORMAT,
    image_col: str = IMAGE_COL,
    lat_col: str = LAT_COL,
    lon_col: str = LON_COL,
    image_template: str = IMAGE_TEMPLATE,
    sep: str = SEP,
    encoding: str = ENCODING,
    val_fraction: float = VAL_FRACTION,
    val_split: str = VAL_SPLIT,
    split_seed: int = SPLIT_SEED,
) -> None:
    """Fit a softmax temperature and report ECE/NLL before and after on the fitted split and on
    --check-split; store it only with --out (a copy) or --in-place."""
    from geovit.calibration import fit_temperature, score_temperature
    from geovit.checkpoint import set_temperature
    from geovit.evaluation import split_logits, split_rows
    from geovit.predictor import Predictor

    if out is not None and in_place:
        raise GeovitError("give --out or --in-place, not both")
    if out is not None or in_place:
        ensure_writable((out or checkpoint).parent, "--in-place" if in_place else "--out")
    set_threads(threads, workers)
    predictor = Predictor.from_checkpoint(checkpoint)
    columns = TableColumns(image_col, lat_col, lon_col, image_template, sep, encoding)
    manifest, _ = load_split_manifest(data, fmt, val_fraction, val_split, split_seed, columns)
    kw = {"batch_size": batch_size, "workers": workers, "max_images": max_images}

    def logits_of(name: str):
        n = min(len(split_rows(manifest, name)), max_images)
        with track(f"logits of {name}", n) as advance:
            return split_logits(predictor, manifest, name, progress=advance, **kw)

    fit = fit_temperature(*logits_of(split))
    if fit.at_bound:
        err_console.print(
            f"[yellow]warning:[/] the best temperature lies at the search bound "
            f"({fit.temperature:.3g}), so the fit is unreliable: is the model trained?",
            highlight=False,
        )
    checks = [(f"{split} (fit)", fit)]
    if check_split != split:
        checks.append((check_split, score_temperature(*logits_of(check_split), fit.temperature)))
    table = Table(
        "split",
        "images",
        "NLL before",
        "NLL after",
        "ECE before",
        "ECE after",
        title=f"temperature T = {fit.temperature:.4f} (before: T = 1; ECE: 15 bins, top-1)",
        title_justify="left",
    )
    for name, f in checks:
        table.add_row(name, str(f.n_images), f"{f.nll_before:.4f}", f"{f.nll_after:.4f}",
                      f"{f.ece_before:.4f}", f"{f.ece_after:.4f}")  # fmt: skip
    console.print(table)
    for name, f in checks:
        if f.ece_after > f.ece_before:
            err_console.print(
                f"[yellow]warning:[/] the fitted temperature makes ECE worse on {name} "
                f"({f.ece_before:.4f} -> {f.ece_after:.4f}); it minimizes NLL, not ECE",
                highlight=False,
            )
    if out is None and not in_place:
        console.print(
            f"{checkpoint} unchanged: pass --out FILE for a calibrated copy or --in-place",
            highlight=False,
        )
        return
    written = set_temperature(checkpoint, fit.temperature, out=out)
    console.print(f"stored temperature {fit.temperature:.4f} in {written}", highlight=False)


def _prediction_table(path: str, pred: Prediction) -> Table:
    table = Table(
        "rank",
        "probability",
        "S2 token",
        "lat",
        "lon",
        "place",
        title=f"{path}: best guess {pred.best_lat:.4f}, {pred.best_lon:.4f}",
        title_justify="left",
    )
    for row in pred.to_dict()["top_k"]:
        table.add_row(
            str(row["rank"]),
            f"{row['probability']:.2%}",
            row["token"],
            f"{row['lat']:.4f}",
            f"{row['lon']:.4f}",
            row["name"] or "-",
        )
    return table


def _geojson(predictor: PredictorBase, results: list[tuple[str, Prediction]]) -> dict:
    """Each image's top-k cells as polygons with their probability, plus its best-guess point."""
    from geovit.maps import cells_geojson

    features = []
    for path, pred in results:
        top = pred.to_dict()
        props = [{"image": path, "kind": "cell", **cell} for cell in top["top_k"]]
        features += cells_geojson(predictor.cells, pred.indices, props)["features"]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [pred.best_lon, pred.best_lat]},
                "properties": {
                    "image": path,
                    "kind": "best_guess",
                    "name": pred.names[0],
                    "token": pred.tokens[0],
                    "probability": float(pred.probs[0]),
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


@app.command()
@friendly
def predict(
    images: list[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", "-c", help="model.pt, best.ckpt or last.ckpt."
    ),
    onnx: Path | None = typer.Option(
        None, "--onnx", help="An exported model.onnx (from `geovit export`) run by onnxruntime."
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Cells to list per image."),
    output: str = typer.Option("table", "--format", "-f", help="table, json or geojson."),
    threads: int = THREADS,
) -> None:
    """Where was each photo taken? Top-k cells with probabilities and a best-guess point."""
    from geovit.onnxmodel import load_predictor
    from geovit.prediction import expand_images, predict_files

    if (checkpoint is None) == (onnx is None):
        raise GeovitError("pass exactly one of --checkpoint CKPT or --onnx model.onnx")
    if output not in FORMATS:
        raise GeovitError(f"--format {output!r} is not one of {', '.join(FORMATS)}")
    paths, problems = expand_images(images)
    if not paths and problems:
        raise GeovitError(f"no images to predict: {problems[0][0]}: {problems[0][1]}")
    if checkpoint is not None:
        set_threads(threads)
    predictor = load_predictor(checkpoint or onnx)
    results = predict_files(predictor, paths, top_k=top_k)
    failed = problems + [(p, r) for p, r in results if isinstance(r, str)]
    good = [(p, r) for p, r in results if not isinstance(r, str)]
    for path, reason in failed:
        err_console.print(f"[bold red]error:[/] {path}: {reason}", highlight=False, soft_wrap=True)
    if output == "table":
        for path, pred in good:
            console.print(_prediction_table(path, pred))
    elif output == "json":
        body = [{"image": p, **r.to_dict()} for p, r in good] + [
            {"image": p, "error": e} for p, e in failed
        ]
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
    else:
        sys.stdout.write(json.dumps(_geojson(predictor, good)) + "\n")
    if failed:
        raise typer.Exit(1)
