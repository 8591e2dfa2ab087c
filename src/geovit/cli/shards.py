"""CLI command: `geovit shards` (a dataset as litdata streaming shards)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import (
    DATA,
    console,
    dataset_options,
    friendly,
    load_split_manifest,
    track,
)
from geovit.dataset_options import DatasetOptions


@app.command()
@friendly
@dataset_options
def shards(
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the shards."),
    chunk_bytes: str = typer.Option("64MB", help="Size of one litdata chunk."),
    *,
    dataset: DatasetOptions,
) -> None:
    """Write DATA as streaming shards (images stay encoded; labels, coordinates and places
    alongside) that `geovit train --data SHARDS` streams; the val hold-out is fixed here."""
    from geovit.data.shards import write_shards

    manifest, _ = load_split_manifest(data, dataset)
    with track("writing shards", len(manifest)) as advance:
        report = write_shards(manifest, out, chunk_bytes=chunk_bytes, progress=advance)
    for line in report.lines():
        console.print(line, highlight=False)
