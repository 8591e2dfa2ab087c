"""Options of the commands that look at one photo (explain, map, report): its true location
and the occlusion settings."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.errors import GeovitError

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


def location(
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
