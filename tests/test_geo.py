"""Geodesy: hand-computed distances, the ellipsoidal reference, score and vector helpers."""

import math

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic

from geovit.errors import GeovitError
from geovit.geo import (
    geoscore,
    haversine_km,
    latlon_to_xyz,
    spherical_mean,
    xyz_to_latlon,
)

R = 6371.0  # the OSV-5M benchmark's sphere


@pytest.mark.parametrize(
    ("lat1", "lon1", "lat2", "lon2", "expected"),
    [
        (0, 0, 0, 1, R * math.pi / 180),  # one degree of the equator
        (0, 0, 1, 0, R * math.pi / 180),  # one degree of a meridian
        (90, 0, 0, 123, R * math.pi / 2),  # pole to equator, any longitude
        (0, 0, 0, 180, R * math.pi),  # antipodes along the equator
        (45, 10, -45, -170, R * math.pi),  # antipodes off the equator
        (0, 179.5, 0, -179.5, R * math.pi / 180),  # across the antimeridian
        (60, 0, 60, 180, R * math.pi / 3),  # over the pole: 30 + 30 degrees
        (12.5, -3.25, 12.5, -3.25, 0.0),
    ],
)
def test_haversine_hand_computed(lat1, lon1, lat2, lon2, expected):
    assert haversine_km(lat1, lon1, lat2, lon2) == pytest.approx(expected, rel=1e-12, abs=1e-9)


def test_haversine_broadcasts_and_is_symmetric():
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-90, 90, 50), rng.uniform(-180, 180, 50)
    d = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    assert d.shape == (50, 50)
    np.testing.assert_allclose(d, d.T, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-9)
    assert d.max() <= math.pi * R + 1e-9


def test_haversine_against_ellipsoidal_geodesics():
    """The sphere stays within 0.5% of WGS84 for random pairs, and never beyond its bound.

    The sphere's 6371 km can be at most 6371 / (a (1 - e^2)) - 1 = 0.561% too long, the ratio to
    the smallest radius of curvature (the meridian's, at the equator): a few N-S pairs near the
    equator exceed 0.5%, so that bound is asserted for all pairs and 0.5% for 99% of them.
    Pairs shorter than 10 km are left out: there the ellipsoid's local curvature dominates too.
    """
    rng = np.random.default_rng(7)
    n = 3000
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, (n, 2))))
    lon = rng.uniform(-180, 180, (n, 2))
    ours = haversine_km(lat[:, 0], lon[:, 0], lat[:, 1], lon[:, 1])
    wgs84 = Geodesic.WGS84
    ref = np.array(
        [
            wgs84.Inverse(a, b, c, d)["s12"] / 1000
            for a, b, c, d in zip(lat[:, 0], lon[:, 0], lat[:, 1], lon[:, 1], strict=True)
        ]
    )
    keep = ref > 10
    rel = np.abs(ours[keep] / ref[keep] - 1)
    meridian_equator_km = wgs84.a * (1 - wgs84.f * (2 - wgs84.f)) / 1000
    assert rel.max() < R / meridian_equator_km - 1
    assert np.mean(rel < 0.005) >= 0.99
    assert np.median(rel) < 0.002


def test_geoscore_formula():
    d = np.array([0.0, 1492.7, 2 * 1492.7, 20037.5])
    np.testing.assert_allclose(geoscore(d), 5000 * np.exp(-d / 1492.7), rtol=1e-15)
    assert geoscore(0.0) == 5000.0
    assert geoscore(1492.7) == pytest.approx(5000 / math.e, rel=1e-15)
    assert np.all(np.diff(geoscore(np.linspace(0, 20000, 100))) < 0)


def test_xyz_known_points_and_round_trip():
    np.testing.assert_allclose(latlon_to_xyz(0, 0), [1, 0, 0], atol=1e-16)
    np.testing.assert_allclose(latlon_to_xyz(0, 90), [0, 1, 0], atol=1e-16)
    np.testing.assert_allclose(latlon_to_xyz(90, 37), [0, 0, 1], atol=1e-16)
    np.testing.assert_allclose(latlon_to_xyz(0, 180), [-1, 0, 0], atol=1e-15)
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-89.9, 89.9, (4, 5)), rng.uniform(-179.9, 179.9, (4, 5))
    xyz = latlon_to_xyz(lat, lon)
    assert xyz.shape == (4, 5, 3)
    np.testing.assert_allclose(np.linalg.norm(xyz, axis=-1), 1.0, rtol=1e-15)
    back_lat, back_lon = xyz_to_latlon(7.5 * xyz)  # the length does not matter
    np.testing.assert_allclose(back_lat, lat, atol=1e-12)
    np.testing.assert_allclose(back_lon, lon, atol=1e-12)


def test_spherical_mean_hand_computed():
    assert spherical_mean([0, 0], [0, 90]) == pytest.approx((0.0, 45.0), abs=1e-12)
    assert spherical_mean([0, 90], [0, 0]) == pytest.approx((45.0, 0.0), abs=1e-12)
    # Across the antimeridian the mean is 180, not the 0 that averaging degrees gives.
    lat, lon = spherical_mean([10, 10], [179, -179])
    assert lat == pytest.approx(
        math.degrees(
            math.atan2(
                math.sin(math.radians(10)), math.cos(math.radians(10)) * math.cos(math.radians(1))
            )
        ),
        abs=1e-12,
    )
    assert abs(lon) == pytest.approx(180.0, abs=1e-12)
    # Three points around the pole average to the pole.
    assert spherical_mean([80, 80, 80], [0, 120, -120])[0] == pytest.approx(90.0, abs=1e-9)


def test_spherical_mean_undefined_is_an_error():
    with pytest.raises(GeovitError, match="undefined"):
        spherical_mean([0, 0], [0, 180])
    with pytest.raises(GeovitError):
        spherical_mean([], [])
