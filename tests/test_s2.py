"""Vectorized S2 against Google's s2geometry bindings, bit for bit."""

import math

import numpy as np
import pytest
import s2geometry as s2

from geovit import s2 as g
from geovit.errors import GeovitError


def ref_leaf_ids(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return np.array(
        [
            s2.S2CellId(s2.S2LatLng.FromDegrees(a, b)).id()
            for a, b in zip(lat.tolist(), lon.tolist(), strict=True)
        ],
        dtype=np.uint64,
    )


def ref_cells(ids: np.ndarray) -> list:
    return [s2.S2Cell(s2.S2CellId(int(i))) for i in ids]


def xyz(p) -> list[float]:
    return [p.x(), p.y(), p.z()]


def hard_points() -> tuple[np.ndarray, np.ndarray]:
    """Poles, antimeridian, zeros, cube-face edges and corners, and their float neighbours."""
    corner = math.degrees(math.atan(1 / math.sqrt(2)))  # latitude of the cube's corners
    any_lon = [-180.0, -135.0, -90.0, -45.0, -0.0, 0.0, 45.0, 90.0, 135.0, 180.0, 12.3]
    lats = [-90.0, 90.0, -45.0, 45.0, 0.0, -0.0, corner, -corner, 89.999999, -89.999999, 30.0]
    base_lat, base_lon = np.meshgrid(lats, any_lon, indexing="ij")
    base_lat, base_lon = base_lat.ravel(), base_lon.ravel()
    out_lat, out_lon = [base_lat], [base_lon]
    for steps in (1, 2, 1000):  # one and a few ulps either side of every hard place
        for dlat, dlon in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1)):
            lat = base_lat + dlat * steps * np.spacing(np.maximum(np.abs(base_lat), 1e-300))
            lon = base_lon + dlon * steps * np.spacing(np.maximum(np.abs(base_lon), 1e-300))
            out_lat.append(np.clip(lat, -90, 90))
            out_lon.append(np.clip(lon, -180, 180))
    return np.concatenate(out_lat), np.concatenate(out_lon)


def test_leaf_ids_match_on_random_globe_points():
    rng = np.random.default_rng(2024)
    n = 100_000
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))  # uniform on the sphere
    lon = rng.uniform(-180, 180, n)
    np.testing.assert_array_equal(g.latlon_to_cell_id(lat, lon), ref_leaf_ids(lat, lon))


def test_leaf_ids_match_on_a_uniform_degree_grid():
    rng = np.random.default_rng(5)
    lat, lon = rng.uniform(-90, 90, 20_000), rng.uniform(-180, 180, 20_000)
    np.testing.assert_array_equal(g.latlon_to_cell_id(lat, lon), ref_leaf_ids(lat, lon))


def test_leaf_ids_match_at_hard_places():
    lat, lon = hard_points()
    assert lat.size > 2000
    np.testing.assert_array_equal(g.latlon_to_cell_id(lat, lon), ref_leaf_ids(lat, lon))


def test_leaf_ids_match_on_cell_boundaries():
    """Vertices and centers of cells at every level sit exactly on face/level boundaries."""
    rng = np.random.default_rng(11)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 600)))
    lon = rng.uniform(-180, 180, 600)
    levels = rng.integers(0, 31, lat.size)
    points = []
    for cell_id, level in zip(ref_leaf_ids(lat, lon), levels, strict=True):
        cell = s2.S2Cell(s2.S2CellId(int(cell_id)).parent(int(level)))
        points += [cell.GetVertex(k) for k in range(4)] + [cell.GetCenter()]
    ll = [s2.S2LatLng(p) for p in points]
    b_lat = np.array([p.lat().degrees() for p in ll])
    b_lon = np.array([p.lng().degrees() for p in ll])
    np.testing.assert_array_equal(g.latlon_to_cell_id(b_lat, b_lon), ref_leaf_ids(b_lat, b_lon))


@pytest.fixture(scope="module")
def random_cells() -> np.ndarray:
    """Cells at random levels 0..30 around random points, including hard places."""
    rng = np.random.default_rng(99)
    h_lat, h_lon = hard_points()
    lat = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, 3000))), h_lat[::5]])
    lon = np.concatenate([rng.uniform(-180, 180, 3000), h_lon[::5]])
    leaf = ref_leaf_ids(lat, lon)
    levels = rng.integers(0, 31, leaf.size)
    return np.array(
        [s2.S2CellId(int(i)).parent(int(lv)).id() for i, lv in zip(leaf, levels, strict=True)],
        dtype=np.uint64,
    )


def test_parent_and_level(random_cells):
    rng = np.random.default_rng(3)
    levels = np.array([s2.S2CellId(int(i)).level() for i in random_cells])
    np.testing.assert_array_equal(g.cell_level(random_cells), levels)
    up = rng.integers(0, levels + 1)
    ref = [s2.S2CellId(int(i)).parent(int(lv)).id() for i, lv in zip(random_cells, up, strict=True)]
    np.testing.assert_array_equal(g.cell_parent(random_cells, up), np.array(ref, dtype=np.uint64))
    faces = [s2.S2CellId(int(i)).parent(0).id() for i in random_cells]
    np.testing.assert_array_equal(g.cell_parent(random_cells, 0), np.array(faces, dtype=np.uint64))
    with pytest.raises(GeovitError):
        g.cell_parent(g.cell_parent(random_cells[:3], 5), 6)  # finer than the cell


def test_children_and_ranges(random_cells):
    ids = random_cells[g.cell_level(random_cells) < 30]
    ref = [[s2.S2CellId(int(i)).child(k).id() for k in range(4)] for i in ids]
    np.testing.assert_array_equal(g.cell_children(ids), np.array(ref, dtype=np.uint64))
    ref_min = [s2.S2CellId(int(i)).range_min().id() for i in random_cells]
    ref_max = [s2.S2CellId(int(i)).range_max().id() for i in random_cells]
    np.testing.assert_array_equal(g.cell_range_min(random_cells), np.array(ref_min, np.uint64))
    np.testing.assert_array_equal(g.cell_range_max(random_cells), np.array(ref_max, np.uint64))
    leaf = random_cells[g.cell_level(random_cells) == 30]
    assert leaf.size > 0
    with pytest.raises(GeovitError, match="no children"):
        g.cell_children(leaf[:1])


def test_tokens_both_ways(random_cells):
    ref = [s2.S2CellId(int(i)).ToToken() for i in random_cells]
    assert g.cell_id_to_token(random_cells).tolist() == ref
    np.testing.assert_array_equal(g.token_to_cell_id(ref), random_cells)
    upper = [t.upper() for t in ref]  # the library accepts either case
    np.testing.assert_array_equal(g.token_to_cell_id(upper), random_cells)
    assert g.cell_id_to_token([0]).tolist() == ["X"]


@pytest.mark.parametrize("bad", ["", "X", "zz", "1" * 17, "0", "2", "e", "8ü", "None"])
def test_invalid_tokens_are_errors(bad):
    with pytest.raises(GeovitError, match="invalid S2 cell token"):
        g.token_to_cell_id(["89c25", bad])


def test_centers_and_vertices_exact(random_cells):
    cells = ref_cells(random_cells)
    ref_center = np.array([xyz(c.GetCenter()) for c in cells])
    ref_vertex = np.array([[xyz(c.GetVertex(k)) for k in range(4)] for c in cells])
    np.testing.assert_array_equal(g.cell_center_xyz(random_cells), ref_center)
    np.testing.assert_array_equal(g.cell_vertices_xyz(random_cells), ref_vertex)


def test_centers_and_vertices_latlon(random_cells):
    cells = ref_cells(random_cells)
    lat, lon = g.cell_center(random_cells)
    ref = [s2.S2LatLng(c.GetCenter()) for c in cells]
    np.testing.assert_allclose(lat, [p.lat().degrees() for p in ref], rtol=0, atol=1e-12)
    np.testing.assert_allclose(lon, [p.lng().degrees() for p in ref], rtol=0, atol=1e-12)
    v_lat, v_lon = g.cell_vertices(random_cells)
    assert v_lat.shape == (random_cells.size, 4)
    ref_v = [[s2.S2LatLng(c.GetVertex(k)) for k in range(4)] for c in cells]
    np.testing.assert_allclose(v_lat, [[p.lat().degrees() for p in r] for r in ref_v], atol=1e-12)
    np.testing.assert_allclose(v_lon, [[p.lng().degrees() for p in r] for r in ref_v], atol=1e-12)


def test_center_is_inside_its_cell(random_cells):
    lat, lon = g.cell_center(random_cells)
    leaf = g.latlon_to_cell_id(lat, lon)
    inside = (leaf >= g.cell_range_min(random_cells)) & (leaf <= g.cell_range_max(random_cells))
    assert inside.all()


def test_area_matches_library(random_cells):
    ref = np.array([c.ApproxArea() for c in ref_cells(random_cells)]) * 6371.0**2
    np.testing.assert_allclose(g.cell_area_km2(random_cells), ref, rtol=1e-12)
    # The six faces tile the sphere.
    faces = (np.arange(6, dtype=np.uint64) << np.uint64(61)) | np.uint64(1 << 60)
    assert g.cell_area_km2(faces).sum() == pytest.approx(4 * math.pi * 6371.0**2, rel=1e-12)


def test_validity_flags():
    ids = np.array([0, 1 << 60, (6 << 61) | 1, 2, 0x89C25], dtype=np.uint64)
    ref = [s2.S2CellId(int(i)).is_valid() for i in ids]
    np.testing.assert_array_equal(g.is_valid_cell_id(ids), ref)
