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
    from geovit.evaluation import split_embeddings, split_rows
    from geovit.gallery import Gallery
    from geovit.predictor import Predictor

    ensure_writable(out.parent)
    set_threads(threads, workers)
    predictor = Predictor.from_checkpoint(checkpoint)
    columns = TableColumns(image_col, lat_col, lon_col, image_template, sep, encoding)
    manifest, _ = load_split_manifest(data, fmt, val_fraction, val_split, split_seed, columns)
    with track(f"embedding {split}", len(split_rows(manifest, split))) as advance:
        emb, rows, n_bad = split_embeddings(
            predictor, manifest, split, batch_size=batch_size, workers=workers, progress=advance
        )
    lat, lon = rows["latitude"].to_numpy(), rows["longitude"].to_numpy()
    gallery = Gallery.build(
        emb,
        lat,
        lon,
        predictor.cells.assign(lat, lon),
        len(predictor.cells),
        predictor.fingerprint(),
        ivf=ivf,
        n_unreadable=n_bad,
        checkpoint=str(checkpoint),
        split=split,
    )
    gallery.save(out)
    meta = gallery.meta
    if n_bad:
        err_console.print(f"[yellow]warning:[/] {n_bad} unreadable images skipped", highlight=False)
    console.print(
        f"wrote {out}: {meta['n_images']:,} images ({meta['index']} index, "
        f"{meta['n_outside_cells']} outside every cell left out, {n_bad} unreadable)",
        highlight=False,
    )
