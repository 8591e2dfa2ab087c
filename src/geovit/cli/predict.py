"""CLI command: `geovit predict` (top-k cells of each photo as a table, JSON or GeoJSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from geovit.cli._app import app
from geovit.cli._common import (
    THREADS,
    choices,
    console,
    err_console,
    friendly,
    inference_options,
    set_threads,
)
from geovit.errors import GeovitError

if TYPE_CHECKING:
    from geovit.prediction import Prediction, PredictorBase

OutputFormat = choices("OutputFormat", ("table", "json", "geojson"))


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
    from geovit.geojson import feature_collection, prediction_geojson

    return feature_collection(
        [
            feature
            for path, pred in results
            for feature in prediction_geojson(predictor.cells, pred, image=path)["features"]
        ]
    )


@app.command()
@friendly
@inference_options
def predict(
    images: list[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", "-c", help="model.pt, best.ckpt or last.ckpt."
    ),
    onnx: Path | None = typer.Option(
        None, "--onnx", help="An exported model.onnx (from `geovit export`) run by onnxruntime."
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Cells to list per image."),
    output: OutputFormat = typer.Option(
        OutputFormat.table, "--format", "-f", help="What to print: a table, JSON or GeoJSON."
    ),
    threads: int = THREADS,
    *,
    inference: dict[str, Any],
) -> None:
    """Where was each photo taken? Top-k cells with probabilities and a best-guess point."""
    from geovit.onnxmodel import load_predictor
    from geovit.prediction import expand_images, predict_files

    if (checkpoint is None) == (onnx is None):
        raise GeovitError("pass exactly one of --checkpoint CKPT or --onnx model.onnx")
    paths, problems = expand_images(images)
    if not paths and problems:
        raise GeovitError(f"no images to predict: {problems[0][0]}: {problems[0][1]}")
    if checkpoint is not None:
        set_threads(threads)
    predictor = load_predictor(checkpoint or onnx, **inference)
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
