"""CLI command: `geovit push` (a trained model to a Hugging Face Hub model repo)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import CHECKPOINT, console, friendly, read_metrics


@app.command()
@friendly
def push(
    checkpoint: Path = CHECKPOINT,
    repo: str = typer.Option(..., "--repo", help="USER/NAME of the Hub model repo."),
    metrics: Path = typer.Option(
        ..., help="metrics.json of `geovit evaluate` (the card's model-index)."
    ),
    data: Path = typer.Option(..., "--data", "-d", help="The dataset the model was trained on."),
    name: str = typer.Option(None, help="Dataset name for the card (default: the folder)."),
    private: bool = typer.Option(False, help="Create the repo as private."),
) -> None:
    """Upload model.safetensors, config.json, cells.parquet and the generated model card."""
    from geovit.card import describe_dataset
    from geovit.publish import push as run_push

    info = describe_dataset(data, name or data.resolve().name)
    url = run_push(checkpoint, read_metrics(metrics), info, repo, private=private)
    console.print(f'pushed to {url}; load it with geovit.load("hf-hub:{repo}")')
