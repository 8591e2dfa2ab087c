"""GeoJSON of cells and predictions: plain [lon, lat] rings, no projection.

The one builder behind the web app's map (``GET /cells``, ``POST /predict``), ``geovit predict
--format geojson`` and the Python API: a prediction's features carry the fields of
``Prediction.to_dict``, so every output describes a prediction with the same keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from geovit.maps import densify_xyz

if TYPE_CHECKING:
    from geovit.cells import CellPartition
    from geovit.predictor import Prediction


# Coarse S2 cells have long geodesic edges: draw them with intermediate points so the map's
# equirectangular polygons follow the true edges; fine cells need only their 4 corners.
_EDGE_POINTS = 8
_DENSIFY_BELOW_LEVEL = 6
_COORD_DECIMALS = 5


def _ring(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """One cell boundary (n,) -> closed, longitude-continuous [lon, lat] ring (m, 2)."""
    pole = np.abs(lat) > 90.0 - 1e-9
    if pole.any():  # a corner on a pole has no longitude: reach it along both neighbours' meridians
        n = len(lat)
        rep = np.repeat(np.arange(n), np.where(pole, 2, 1))
        lat, lon = lat[rep], lon[rep].copy()
        first = np.flatnonzero(pole[rep] & np.r_[True, rep[1:] != rep[:-1]])
        lon[first] = lon[(first - 1) % len(lon)]
        lon[first + 1] = lon[(first + 2) % len(lon)]
    lon = np.degrees(np.unwrap(np.radians(lon)))
    lon = lon - 360.0 * np.round(lon.mean() / 360.0)
    closing = (lon[0] - lon[-1] + 180.0) % 360.0 - 180.0
    points = np.column_stack([lon, lat])
    if abs(lon[-1] + closing - lon[0]) > 180.0:  # the ring winds around a pole it contains
        points = _polar_ring(np.r_[lon, lon[-1] + closing], np.r_[lat, lat[0]])
    return np.vstack([points, points[:1]])


def _polar_ring(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """A closed ring winding once around a pole -> a polygon over [-180, 180]: cut it at the
    antimeridian and close it along the pole (how equirectangular maps draw polar caps)."""
    if lon[-1] < lon[0]:
        lon, lat = lon[::-1], lat[::-1]
    cut = 360.0 * np.ceil((lon[0] + 180.0) / 360.0) - 180.0  # the antimeridian inside the ring
    cut_lat = np.interp(cut, lon, lat)  # edges not through a pole are monotonic in longitude
    after, before = lon > cut, lon[1:] < cut
    ring_lon = np.r_[cut, lon[after], lon[1:][before] + 360.0, cut + 360.0]
    ring_lat = np.r_[cut_lat, lat[after], lat[1:][before], cut_lat]
    pole = 90.0 if lat.mean() > 0 else -90.0
    ring = np.column_stack([np.r_[ring_lon, cut + 360.0, cut], np.r_[ring_lat, pole, pole]])
    ring[:, 0] -= cut + 180.0
    return ring


def cell_rings(cells: CellPartition, indices: np.ndarray) -> list[list[list[float]]]:
    """Closed [lon, lat] rings of the given classes' S2 cells, ready for GeoJSON.

    Edges of coarse cells are densified along great circles. Longitudes are unwrapped so a ring
    crossing the antimeridian stays contiguous (values may leave [-180, 180], as Leaflet and the
    page expect); a ring around a pole is closed along that pole's parallel.
    """
    dlat, dlon = densify_xyz(cells.corners_xyz(indices), _EDGE_POINTS)
    coarse = np.asarray(cells.levels)[indices] < _DENSIFY_BELOW_LEVEL
    return [
        _ring(*(r if c else r[::_EDGE_POINTS] for r in (la, lo))).round(_COORD_DECIMALS).tolist()
        for la, lo, c in zip(dlat, dlon, coarse, strict=True)
    ]


def cells_geojson(
    cells: CellPartition, indices: Sequence[int], properties: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection with one polygon per class index, carrying `properties`."""
    idx = np.asarray(indices, dtype=np.int64)
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": p}
        for ring, p in zip(cell_rings(cells, idx), properties, strict=True)
    ]
    return feature_collection(features)


def cell_info(cells: CellPartition, i: int) -> dict[str, Any]:
    """One class as plain JSON: index, token, level, place name and centroid."""
    return {
        "index": int(i),
        "token": str(cells.tokens[i]),
        "level": int(cells.levels[i]),
        "name": str(cells.names[i]),
        "lat": float(cells.centroid_lat[i]),
        "lon": float(cells.centroid_lon[i]),
    }


def partition_geojson(cells: CellPartition) -> dict[str, Any]:
    """Every class of the partition as a GeoJSON polygon with its token, name and photo count."""
    idx = np.arange(len(cells))
    props = [{**cell_info(cells, i), "count": int(cells.counts[i])} for i in idx]
    return cells_geojson(cells, idx, props)


def feature_collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": features}


def prediction_geojson(
    cells: CellPartition, pred: Prediction, *, image: str | None = None, best_guess: bool = True
) -> dict[str, Any]:
    """One prediction as GeoJSON: its top-k cells as polygons (``kind`` "cell", properties
    the ``top_k`` entries of ``Prediction.to_dict``) and, with ``best_guess``, its best-guess
    point (``kind`` "best_guess"); ``image`` tags every feature with the photo's name."""
    tag = {} if image is None else {"image": image}
    props = [{**tag, "kind": "cell", **c} for c in pred.to_dict()["top_k"]]
    features = cells_geojson(cells, pred.indices, props)["features"]
    if best_guess:
        point = {"type": "Point", "coordinates": [pred.best_lon, pred.best_lat]}
        top = {"name": pred.names[0], "token": pred.tokens[0], "probability": float(pred.probs[0])}
        properties = {**tag, "kind": "best_guess", **top}
        features.append({"type": "Feature", "geometry": point, "properties": properties})
    return feature_collection(features)
