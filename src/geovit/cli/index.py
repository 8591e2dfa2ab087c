"""CLI command: `geovit index` (the retrieval gallery of --point retrieval)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import (
    BATCH_SIZE,
    CHECKPOINT,
    DATA,
    THREADS,
    WORKERS,
    Split,
    console,
    dataset_options,
    err_console,
    friendly,
    load_split_manifest,
    set_threads,
    track,
)
from geovit.dataset_options import DatasetOptions
from geovit.fileio import ensure_writable


@app.command()
@friendly
@dataset_options
def index(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", "-o", help="Gallery file to write, e.g. gallery.faiss."),
    split: Split = typer.Option(Split.train, help="Split whose images form the gallery."),
    ivf: int | None = typer.Option(
        None, "--ivf", min=1, help="IVF index with this many lists (millions of images)."
    ),
    batch_size: int = BATCH_SIZE,
    workers: int = WORKERS,
    threads: int = THREADS,
    *,
    dataset: DatasetOptions,
) -> None:
    """Embed a split's images with the checkpoint and store them, with their coordinates, as
    the gallery `--point retrieval --index FILE` searches (for this checkpoint only)."""
    from geovit.evaluation import index_split, split_rows
    from geovit.predictor import Predictor

    ensure_writable(out.parent)
    set_threads(threads, workers)
    predictor = Predictor.from_checkpoint(checkpoint)
    manifest, _ = load_split_manifest(data, dataset)
    with track(f"embedding {split}", len(split_rows(manifest, split))) as advance:
        gallery = index_split(
            predictor, manifest, str(split), ivf=ivf, batch_size=batch_size, workers=workers,
            progress=advance,
        )  # fmt: skip
    gallery.meta["checkpoint"] = str(checkpoint)
    gallery.save(out)
    meta = gallery.meta
    if meta["n_unreadable"]:
        err_console.print(
            f"[yellow]warning:[/] {meta['n_unreadable']} unreadable images skipped",
            highlight=False,
        )
    console.print(
        f"wrote {out}: {meta['n_images']:,} images ({meta['index']} index, "
        f"{meta['n_outside_cells']} outside every cell left out, "
        f"{meta['n_unreadable']} unreadable)",
        highlight=False,
    )
