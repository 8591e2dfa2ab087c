"""CLI commands: `geovit explain` (occlusion heatmap), `geovit map` (probability map) and
`geovit report` (one self-contained HTML page)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import (
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
    TableColumns,
    console,
    friendly,
    load_split_manifest,
    read_metrics,
    set_threads,
    track,
)
from geovit.errors import GeovitError
from geovit.fileio import ensure_writable

IMAGE = typer.Argument(..., help="A photo (JPEG/PNG path).")
LAT = typer.Option(None, help="True latitude of the photo (degrees).")
LON = typer.Option(None, help="True longitude of the photo (degrees).")
LOCATION_DATA = typer.Option(
    None, "--data", "-d", help="Dataset whose manifest gives the photo's true location."
)
PATCH = typer.Option(
    None, help="Occluding patch size in model-input pixels [default: 1/7 of the input, 32 at 224]."
)
STRIDE = typer.Option(
    None, help="Step between patch positions in pixels [default: 1/28 of the input, 8 at 224]."
)
FILL = typer.Option("mean", help="Patch colour: 'mean' (dataset mean) or R,G,B in 0-255.")
FAST = typer.Option(False, "--fast", help="bf16 autocast + channels_last (about 2x faster).")
BASEMAP = typer.Option(
    None, "--basemap", help="Folder of Natural Earth shapefiles for finer boundaries (needs pyshp)."
)


def _location(
    lat: float | None, lon: float | None, image: Path, data: Path | None
) -> tuple[float | None, float | None]:
    """The photo's true location: --lat/--lon, else its manifest row in --data (by id or path)."""
    if (lat is None) != (lon is None):
        raise GeovitError("give both --lat and --lon (or neither)")
    if lat is not None or data is None:
        return lat, lon
    from geovit.data.manifest import locate_image

    found = locate_image(data, image)  # this photo's row only, not the whole dataset
    if found is None:
        raise GeovitError(
            f"{image} is not in the manifest of {data} (no id {image.stem!r}): pass --lat/--lon"
        )
    return found


@app.command()
@friendly
def explain(
    image: Path = IMAGE,
    checkpoint: Path = CHECKPOINT,
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the heatmap PNG."),
    target: str = typer.Option(
        None,
        help="Cell to explain: 'true' (needs --lat/--lon) or 'top'. Default: true if a "
        "location is given, else top.",
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

    lat, lon = _location(lat, lon, image, data)
    if target not in (None, "true", "top"):
        raise GeovitError(f"--target {target!r} must be 'true' or 'top'")
    ensure_writable(out)
    set_threads(threads)
    predictor = Predictor.from_checkpoint(checkpoint)
    expl = explain_image(
        predictor,
        image,
        lat=lat,
        lon=lon,
        target=target,
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

    lat, lon = _location(lat, lon, image, data)
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


@app.command()
@friendly
def report(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", "-o", help="Folder for report.html."),
    split: str = typer.Option("test", help="Split to report on."),
    metrics: Path = typer.Option(
        None, "--metrics", help="metrics.json of an earlier `geovit evaluate` (skips that pass)."
    ),
    examples: int = typer.Option(2, "--examples", help="Gallery images per kind."),
    fmt: str = DATA_FORMAT,
    val_fraction: float = VAL_FRACTION,
    val_split: str = VAL_SPLIT,
    split_seed: int = SPLIT_SEED,
    patch: int | None = PATCH,
    stride: int | None = STRIDE,
    fill: str = FILL,
    fast: bool = FAST,
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per forward pass."),
    threads: int = THREADS,
    image_col: str = IMAGE_COL,
    lat_col: str = LAT_COL,
    lon_col: str = LON_COL,
    image_template: str = IMAGE_TEMPLATE,
    sep: str = SEP,
    encoding: str = ENCODING,
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
    columns = TableColumns(image_col, lat_col, lon_col, image_template, sep, encoding)
    manifest, _ = load_split_manifest(data, fmt, val_fraction, val_split, split_seed, columns)
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
