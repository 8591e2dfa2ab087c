"""CLI command: `geovit explain` (occlusion heatmap)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import CHECKPOINT, THREADS, choices, console, friendly, plain, set_threads
from geovit.cli._photo import FAST, FILL, IMAGE, LAT, LOCATION_DATA, LON, PATCH, STRIDE, location
from geovit.fileio import ensure_writable

Target = choices("Target", ("true", "top"))  # explain_image's targets


@app.command()
@friendly
def explain(
    image: Path = IMAGE,
    checkpoint: Path = CHECKPOINT,
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the heatmap PNG."),
    target: Target = typer.Option(
        None,
        help="Cell to explain: the true one (needs a location) or the top one. Default: true if "
        "a location is given, else top.",
    ),
    lat: float = LAT,
    lon: float = LON,
    data: Path = LOCATION_DATA,
    patch: int | None = PATCH,
    stride: int | None = STRIDE,
    fill: str = FILL,
    fast: bool = FAST,
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Occluded copies per forward."),
    threads: int = THREADS,
) -> None:
    """Occlusion heatmap: which parts of the photo the target cell's probability depends on."""
    from geovit.explain import explain_image, render_explanation
    from geovit.predictor import Predictor

    lat, lon = location(lat, lon, image, data)
    ensure_writable(out)
    set_threads(threads)
    predictor = Predictor.from_checkpoint(checkpoint)
    expl = explain_image(
        predictor,
        image,
        lat=lat,
        lon=lon,
        target=plain(target),
        patch=patch,
        stride=stride,
        fill=fill,
        batch_size=batch_size,
        fast=fast,
    )
    png = out / f"{image.stem}_occlusion.png"
    render_explanation(expl, png)
    console.print(
        f"{expl.target_kind} cell {expl.token} {expl.name} p={expl.prob:.4f} "
        f"(top-1 {predictor.cells.tokens[expl.top]} p={expl.top_prob:.4f}); wrote {png}",
        highlight=False,
    )
