"""CLI command: `geovit evaluate` (a checkpoint scored on one split)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from geovit.cli._app import app
from geovit.cli._common import (
    BATCH_SIZE,
    CACHE_DIR,
    CHECKPOINT,
    DATA,
    THREADS,
    WORKERS,
    Split,
    console,
    dataset_options,
    friendly,
    inference_options,
    load_split_manifest,
    set_threads,
    track,
)
from geovit.dataset_options import DatasetOptions
from geovit.errors import GeovitError
from geovit.fileio import ensure_writable


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise GeovitError(
            f"--accuracy-at {text!r} must be positive integers separated by commas, e.g. 1,3,5"
        )
    return ks


@app.command()
@friendly
@dataset_options
@inference_options
def evaluate(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    split: Split = typer.Option(Split.test, help="Which split to score."),
    accuracy_at: str = typer.Option(
        "1,3,5", help="Report top-k cell accuracy at these k (comma-separated), e.g. 1,3,5,10."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for metrics.json, metrics.md, reliability.png."
    ),
    places: bool = typer.Option(
        True, help="Country/region/sub-region/city accuracy (offline geocoder)."
    ),
    batch_size: int = BATCH_SIZE,
    workers: int = WORKERS,
    threads: int = THREADS,
    cache_dir: Path = CACHE_DIR,
    *,
    dataset: DatasetOptions,
    inference: dict[str, Any],
) -> None:
    """Score a checkpoint on one split: cell accuracy, distances, places, calibration."""
    from geovit.evaluation import evaluate as run_evaluation
    from geovit.evaluation import split_rows, summary_tables, write_outputs
    from geovit.predictor import Predictor

    ks = _parse_ks(accuracy_at)
    ensure_writable(out)
    set_threads(threads, workers)
    predictor = Predictor.from_checkpoint(checkpoint).configure(**inference)
    manifest, _ = load_split_manifest(data, dataset, cache_dir)
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
    if inference["index"] is not None:
        metrics["index"] = inference["index"]
    for title, header, rows in summary_tables(metrics):
        table = Table(*header, title=title, title_justify="left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"distances: {metrics['distance']['convention']}", highlight=False)
    paths = write_outputs(metrics, out, title=f"Evaluation of {checkpoint.name} on {split}")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()), highlight=False)
