"""CLI command: `geovit map` (probability map over all cells)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import CHECKPOINT, console, friendly
from geovit.cli._photo import BASEMAP, IMAGE, LAT, LOCATION_DATA, LON, location
from geovit.errors import GeovitError
from geovit.fileio import ensure_writable


@app.command("map")
@friendly
def map_command(
    image: Path = IMAGE,
    checkpoint: Path = CHECKPOINT,
    out: Path = typer.Option(..., "--out", "-o", help="PNG path of the map (e.g. map.png)."),
    html: Path = typer.Option(None, "--html", help="Interactive HTML map (default: OUT.html)."),
    lat: float = LAT,
    lon: float = LON,
    data: Path = LOCATION_DATA,
    top_k: int = typer.Option(5, "--top-k", "-k", help="Cells outlined and labelled."),
    log: bool = typer.Option(
        True, "--log/--linear", help="Colour scale: log 1e-4..1 or linear 0..1 (fixed for all)."
    ),
    basemap: Path = BASEMAP,
) -> None:
    """Probability map: the model's softmax over all cells, top cells labelled, truth in red."""
    from geovit.maps import map_image
    from geovit.predictor import Predictor

    lat, lon = location(lat, lon, image, data)
    if top_k < 0:
        raise GeovitError(f"--top-k {top_k} must be >= 0")
    html_path = html or out.with_suffix(".html")
    ensure_writable(out.parent)
    ensure_writable(html_path.parent, "--html")
    predictor = Predictor.from_checkpoint(checkpoint)
    cmap = map_image(
        predictor,
        image,
        lat=lat,
        lon=lon,
        top_k=top_k,
        log=log,
        png=out,
        html_path=html_path,
        title=f"{image.name}: probability over {len(predictor.cells)} cells",
        basemap_dir=basemap,
    )
    cells = predictor.cells
    for rank, i in enumerate(cmap.top, start=1):
        console.print(
            f"{rank}. {cells.tokens[i]} {cells.names[i]} p={cmap.probs[i]:.4f}", highlight=False
        )
    console.print(f"wrote {out} and {html_path}", highlight=False)
