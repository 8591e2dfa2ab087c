"""Geodesy on a spherical Earth: distances, the GeoGuessr score and unit vectors.

The sphere (R = 6371 km) and haversine formula are the conventions of the OpenStreetView-5M
benchmark code, so our distances and scores compare with published numbers. Everything is
vectorized NumPy and broadcasts like ufuncs.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from geovit.errors import GeovitError

EARTH_RADIUS_KM = 6371.0
GEOSCORE_SCALE_KM = 1492.7
GEOSCORE_MAX = 5000.0
# PIGEON's haversine label smoothing temperature, exp(-d / tau) like GeoScore (geovit.losses)
DEFAULT_TAU_KM = 75.0


def haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting)."""
    phi1, lam1, phi2, lam2 = (
        np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lon1, lat2, lon2)
    )
    a = (
        np.sin((phi2 - phi1) / 2) ** 2
        + np.cos(phi1) * np.cos(phi2) * np.sin((lam2 - lam1) / 2) ** 2
    )
    # Rounding can push `a` a hair past 1 for antipodes; clip so arcsin stays defined.
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def geoscore(d_km: ArrayLike) -> np.ndarray:
    """GeoGuessr score of a guess `d_km` away: 5000 at 0 km, decaying with a 1492.7 km scale."""
    return GEOSCORE_MAX * np.exp(-np.asarray(d_km, dtype=np.float64) / GEOSCORE_SCALE_KM)


def latlon_to_xyz(lat: ArrayLike, lon: ArrayLike) -> np.ndarray:
    """Unit vectors (..., 3) for degrees lat/lon.

    The operation order is S2LatLng::ToPoint's, so S2 cell ids computed from these vectors are
    bit-identical with the C++ library.
    """
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    theta = np.radians(np.asarray(lon, dtype=np.float64))
    phi, theta = np.broadcast_arrays(phi, theta)
    cosphi = np.cos(phi)
    out = np.empty((*phi.shape, 3), dtype=np.float64)
    out[..., 0] = np.cos(theta) * cosphi
    out[..., 1] = np.sin(theta) * cosphi
    out[..., 2] = np.sin(phi)
    return out


def xyz_to_latlon(xyz: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Degrees (lat, lon) of vectors (..., 3); the length of the vectors does not matter."""
    v = np.asarray(xyz, dtype=np.float64)
    # "+ 0.0" turns -0.0 into +0.0, as S2LatLng does, so longitudes lie in (-180, 180].
    x, y, z = v[..., 0] + 0.0, v[..., 1] + 0.0, v[..., 2] + 0.0
    lat = np.degrees(np.arctan2(z, np.sqrt(x * x + y * y)))
    lon = np.degrees(np.arctan2(y, x))
    return lat, lon


def spherical_mean(lat: ArrayLike, lon: ArrayLike) -> tuple[float, float]:
    """Mean position on the sphere: the normalized mean of the points' unit vectors.

    Unlike averaging degrees, this is right across the antimeridian and near the poles.
    """
    total = latlon_to_xyz(lat, lon).reshape(-1, 3).sum(axis=0)
    n = max(np.size(lat), np.size(lon))
    if n == 0 or np.linalg.norm(total) <= 1e-9 * n:
        raise GeovitError(
            f"spherical_mean of {n} points is undefined (no points, or they cancel out on the "
            "sphere); pass points that lie in one hemisphere"
        )
    mean_lat, mean_lon = xyz_to_latlon(total)
    return float(mean_lat), float(mean_lon)


def _east_north(lat0: ArrayLike, lon0: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (..., 3) of the point, and of east and north in its tangent plane."""
    c = latlon_to_xyz(lat0, lon0)
    lam = np.radians(np.asarray(lon0, dtype=np.float64))
    phi = np.radians(np.asarray(lat0, dtype=np.float64))
    lam, phi = np.broadcast_arrays(lam, phi)
    east = np.stack([-np.sin(lam), np.cos(lam), np.zeros_like(lam)], axis=-1)
    north = np.stack([-np.sin(phi) * np.cos(lam), -np.sin(phi) * np.sin(lam), np.cos(phi)], axis=-1)
    return c, east, north


def to_tangent(
    lat0: ArrayLike, lon0: ArrayLike, lat: ArrayLike, lon: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) km of points in the tangent plane at (lat0, lon0): the gnomonic projection.

    Exactly inverted by :func:`from_tangent` (the offset head's target and its decoding), and
    within 1 % of the great-circle offset up to ~1,000 km from the tangent point.
    Points 90 degrees or more away have no gnomonic image: GeovitError.
    """
    c, east, north = _east_north(lat0, lon0)
    p = latlon_to_xyz(lat, lon)
    cos = np.sum(p * c, axis=-1)
    if np.any(cos <= 0):
        raise GeovitError("to_tangent: a point lies 90 degrees or more from its tangent point")
    q = p / cos[..., None]
    e = np.sum(q * east, axis=-1) * EARTH_RADIUS_KM
    n = np.sum(q * north, axis=-1) * EARTH_RADIUS_KM
    return e, n


def from_tangent(
    lat0: ArrayLike, lon0: ArrayLike, east_km: ArrayLike, north_km: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Degrees (lat, lon) of tangent-plane offsets at (lat0, lon0): inverse of to_tangent."""
    c, east, north = _east_north(lat0, lon0)
    e = np.asarray(east_km, dtype=np.float64)[..., None] / EARTH_RADIUS_KM
    n = np.asarray(north_km, dtype=np.float64)[..., None] / EARTH_RADIUS_KM
    return xyz_to_latlon(c + e * east + n * north)
