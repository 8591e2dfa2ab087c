"""CLI command: `geovit index` (the retrieval gallery of --point retrieval)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import (
    BATCH_SIZE,
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
from geovit.fileio import ensure_writable


@app.command()
@friendly
def index(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", "-o", help="Gallery file to write, e.g. gallery.faiss."),
    split: str = typer.Option("train", help="Split whose images form the gallery."),
    ivf: int | None = typer.Option(
        None, "--ivf", min=1, help="IVF index with this many lists (millions of images)."
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
    """Embed a split's images with the checkpoint and store them, with their coordinates, as
    the gallery `--point retrieval --index FILE` searches (for this checkpoint only)."""
    from geovit.evaluation import index_split, split_rows
    from geovit.predictor import Predictor

    ensure_writable(out.parent)
    set_threads(threads, workers)
    predictor = Predictor.from_checkpoint(checkpoint)
    columns = TableColumns(image_col, lat_col, lon_col, image_template, sep, encoding)
    manifest, _ = load_split_manifest(data, fmt, val_fraction, val_split, split_seed, columns)
    with track(f"embedding {split}", len(split_rows(manifest, split))) as advance:
        gallery = index_split(
            predictor, manifest, split, ivf=ivf, batch_size=batch_size, workers=workers,
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
