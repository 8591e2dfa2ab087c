"""CLI command: `geovit report` (one self-contained HTML page)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import (
    BATCH_SIZE,
    CHECKPOINT,
    DATA,
    THREADS,
    Split,
    console,
    dataset_options,
    friendly,
    load_split_manifest,
    read_metrics,
    set_threads,
    track,
)
from geovit.cli._photo import FAST, FILL, PATCH, STRIDE
from geovit.dataset_options import DatasetOptions
from geovit.errors import GeovitError
from geovit.fileio import ensure_writable


@app.command()
@friendly
@dataset_options
def report(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", "-o", help="Folder for report.html."),
    split: Split = typer.Option(Split.test, help="Split to report on."),
    metrics: Path = typer.Option(
        None, "--metrics", help="metrics.json of an earlier `geovit evaluate` (skips that pass)."
    ),
    examples: int = typer.Option(2, "--examples", help="Gallery images per kind."),
    patch: int | None = PATCH,
    stride: int | None = STRIDE,
    fill: str = FILL,
    fast: bool = FAST,
    batch_size: int = BATCH_SIZE,
    threads: int = THREADS,
    *,
    dataset: DatasetOptions,
) -> None:
    """One self-contained HTML page: metrics, reliability, accuracy map and an example gallery."""
    from geovit.data.synth import is_synthetic_world
    from geovit.explain import parse_fill
    from geovit.predictor import Predictor
    from geovit.report import build_report

    if examples < 0:
        raise GeovitError(f"--examples {examples} must be >= 0")
    given = read_metrics(metrics) if metrics is not None else None
    ensure_writable(out)
    set_threads(threads)
    predictor = Predictor.from_checkpoint(checkpoint)
    parse_fill(fill, predictor.mean, predictor.std)  # fail before the long passes
    manifest, _ = load_split_manifest(data, dataset)
    with track(f"scoring {split}", int((manifest["split"] == split).sum())) as advance:
        page = build_report(
            predictor,
            manifest,
            out,
            split=split,
            metrics=given,
            per_kind=examples,
            batch_size=batch_size,
            title=f"GeoViT report: {checkpoint.name} on {data.name} ({split})",
            progress=advance,
            run_dir=checkpoint.parent,
            synthetic=is_synthetic_world(data),
            patch=patch,
            stride=stride,
            fill=fill,
            fast=fast,
        )
    console.print(f"wrote {page}", highlight=False)
