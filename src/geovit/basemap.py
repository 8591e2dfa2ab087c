"""Boundary lines for maps: the embedded simplified Natural Earth file, or a user's own copy.

cartopy downloads Natural Earth on first use and fails offline, so geovit ships
assets/basemap.json (made by scripts/make_basemap.py; public domain): coastlines, country
borders and state/province lines at two resolutions, 1:110m for the world and simplified 1:10m
inside North America. A directory of Natural Earth shapefiles can be used instead for finer lines.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from geovit.errors import GeovitError

LAYERS = ("coastline", "admin0", "admin1")
_NE_STEMS = {
    "coastline": "coastline",
    "admin0": "admin_0_boundary_lines_land",
    "admin1": "admin_1_states_provinces_lines",
}
Extent = tuple[float, float, float, float]  # lon_min, lat_min, lon_max, lat_max


@dataclass(frozen=True)
class Basemap:
    """Polylines per layer, each an (n, 2) array of lon/lat degrees."""

    layers: dict[str, list[np.ndarray]]
    attribution: str

    def lines(self, layer: str, extent: Extent | None = None) -> list[np.ndarray]:
        """The layer's lines, only those whose bounding box meets `extent` when given."""
        lines = self.layers.get(layer, [])
        if extent is None:
            return lines
        x0, y0, x1, y1 = extent
        return [
            p
            for p in lines
            if p[:, 0].max() >= x0
            and p[:, 0].min() <= x1
            and p[:, 1].max() >= y0
            and p[:, 1].min() <= y1
        ]


@functools.cache
def _embedded() -> dict:
    return json.loads(resources.files("geovit").joinpath("assets/basemap.json").read_text())


def _decode(lines: list[list[int]], precision: int) -> list[np.ndarray]:
    scale = 10.0**-precision
    return [np.cumsum(np.asarray(v, dtype=np.int64).reshape(-1, 2), axis=0) * scale for v in lines]


def _inside(extent: Extent, box: Extent) -> bool:
    return (
        extent[0] >= box[0] and extent[1] >= box[1] and extent[2] <= box[2] and extent[3] <= box[3]
    )


@functools.cache
def _embedded_basemap(resolution: str) -> Basemap:
    doc = _embedded()
    layers = {k: _decode(doc[resolution][k], doc["precision"]) for k in LAYERS}
    return Basemap(layers=layers, attribution=doc["attribution"])


def load_basemap(extent: Extent | None = None, source: str | Path | None = None) -> Basemap:
    """The basemap for a map of `extent`.

    Embedded: the detailed lines when the extent lies inside their box (North America), else the
    world lines. `source`: a directory of Natural Earth shapefiles (ne_*_coastline.shp,
    ne_*_admin_0_boundary_lines_land.shp, ne_*_admin_1_states_provinces_lines.shp; the finest
    scale found is used), read with pyshp.
    """
    if source is not None:
        return _read_natural_earth(Path(source))
    box = tuple(_embedded()["detail_box"])
    detailed = extent is not None and _inside(extent, box)  # type: ignore[arg-type]
    return _embedded_basemap("detail" if detailed else "world")


def _read_natural_earth(folder: Path) -> Basemap:
    import shapefile  # pyshp

    if not folder.is_dir():
        raise GeovitError(f"basemap folder {folder} does not exist; pass a Natural Earth folder")
    layers: dict[str, list[np.ndarray]] = {}
    for key, stem in _NE_STEMS.items():
        found = sorted(folder.rglob(f"ne_*_{stem}.shp"), key=_scale_of)
        if not found:
            raise GeovitError(f"no ne_*_{stem}.shp in {folder}; download it from naturalearthdata")
        lines = []
        with shapefile.Reader(str(found[0])) as reader:
            for shape in reader.iterShapes():
                pts = np.asarray(shape.points, dtype=np.float64)
                ends = [*list(shape.parts), len(pts)]
                lines += [pts[a:b] for a, b in itertools.pairwise(ends) if b - a > 1]
        layers[key] = lines
    return Basemap(layers=layers, attribution="Made with Natural Earth (public domain).")


def _scale_of(path: Path) -> int:
    """Sort key: 10m before 50m before 110m (finest first)."""
    digits = "".join(ch for ch in path.name.split("_")[1] if ch.isdigit())
    return int(digits or 10**6)
