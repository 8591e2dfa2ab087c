"""CLI command: `geovit card` (model card + datasheet from a run's own numbers)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import (
    CHECKPOINT,
    DATA,
    console,
    dataset_options,
    friendly,
    load_split_manifest,
    read_metrics,
)
from geovit.dataset_options import DatasetOptions


@app.command()
@friendly
@dataset_options
def card(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", "-o", help="Folder for MODEL_CARD.md and DATASHEET.md."),
    metrics: Path = typer.Option(
        None, help="metrics.json of an earlier `geovit evaluate` (else the test split is scored)."
    ),
    name: str = typer.Option(None, help="Dataset name for the documents (default: the folder)."),
    *,
    dataset: DatasetOptions,
) -> None:
    """Write MODEL_CARD.md (Hugging Face format) and DATASHEET.md from a run's own numbers."""
    from geovit.card import describe_dataset, write_cards
    from geovit.checkpoint import load_checkpoint
    from geovit.evaluation import evaluate
    from geovit.predictor import Predictor

    manifest, report = load_split_manifest(data, dataset)
    ckpt = load_checkpoint(checkpoint)
    if metrics is None:
        scores = evaluate(Predictor.from_loaded(ckpt), manifest, "test")
    else:
        scores = read_metrics(metrics)
    info = describe_dataset(data, name or data.resolve().name)
    paths = write_cards(out, ckpt, scores, manifest, report.lines(), info)
    for path in paths:
        console.print(f"wrote {path}")
