"""Point estimators (geovit.points) and the retrieval gallery (geovit.gallery) against hand
computations on tiny hand-made cells and galleries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geovit import points, s2
from geovit.cells import CellPartition
from geovit.errors import GeovitError
from geovit.gallery import Gallery
from geovit.geo import haversine_km, to_tangent

# Three cells: A and B 66 km apart, C in Spain (far from both).
LAT = np.array([48.0, 48.5, 40.0])
LON = np.array([2.0, 2.5, -3.0])


def make_cells(lat: np.ndarray, lon: np.ndarray, level: int = 8) -> CellPartition:
    """Cells at `level` around the given points, whose centroids are the points themselves."""
    ids = s2.cell_parent(s2.latlon_to_cell_id(lat, lon), level)
    order = np.argsort(ids)
    c_lat, c_lon = s2.cell_center(ids[order])
    return CellPartition(
        cell_ids=ids[order], levels=np.full(len(ids), level), counts=np.ones(len(ids), np.int64),
        centroid_lat=np.asarray(lat)[order], centroid_lon=np.asarray(lon)[order],
        center_lat=c_lat, center_lon=c_lon, names=np.array([""] * len(ids)),
        t1=1, t2=1, n_points=len(ids), n_dropped=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cells() -> CellPartition:
    return make_cells(LAT, LON)


def unit(lat: float, lon: float) -> np.ndarray:
    p, t = math.radians(lat), math.radians(lon)
    return np.array([math.cos(p) * math.cos(t), math.cos(p) * math.sin(t), math.sin(p)])


def latlon(v: np.ndarray) -> tuple[float, float]:
    return math.degrees(math.atan2(v[2], math.hypot(v[0], v[1]))), math.degrees(
        math.atan2(v[1], v[0])
    )


def test_top1_is_the_top_cells_centroid(cells):
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    lat, lon = points.make_point("top1", cells).locate({"probs": probs})
    np.testing.assert_array_equal(lat, cells.centroid_lat[[1, 0]])
    np.testing.assert_array_equal(lon, cells.centroid_lon[[1, 0]])


def test_weighted_is_the_weighted_unit_vector_mean_of_the_cells_near_the_top(cells):
    a, b, c = (int(np.flatnonzero(cells.centroid_lat == v)[0]) for v in LAT)
    assert haversine_km(LAT[0], LON[0], LAT[1], LON[1]) < points.WEIGHTED_RADIUS_KM
    assert haversine_km(LAT[0], LON[0], LAT[2], LON[2]) > points.WEIGHTED_RADIUS_KM
    probs = np.zeros((2, 3))
    probs[0, [a, b, c]] = 0.5, 0.3, 0.2  # top A: A and B averaged, C (far) left out
    probs[1, [a, b, c]] = 0.1, 0.2, 0.7  # top C: C alone
    lat, lon = points.make_point("weighted", cells).locate({"probs": probs})
    want = latlon(0.5 * unit(LAT[0], LON[0]) + 0.3 * unit(LAT[1], LON[1]))
    np.testing.assert_allclose([lat[0], lon[0]], want, atol=1e-9)
    np.testing.assert_allclose([lat[1], lon[1]], [LAT[2], LON[2]], atol=1e-9)
    assert LAT[0] < lat[0] < LAT[1]  # between A and B, nearer A (the likelier)
    assert haversine_km(lat[0], lon[0], LAT[0], LON[0]) < haversine_km(
        lat[0], lon[0], LAT[1], LON[1]
    )


def test_hybrid_with_a_perfect_offset_returns_the_true_point(cells):
    true_lat, true_lon = np.array([48.03, 40.1]), np.array([2.07, -3.2])
    probs = np.full((2, 3), 0.1)
    top = np.array([int(np.argmin(haversine_km(t, u, cells.centroid_lat, cells.centroid_lon)))
                    for t, u in zip(true_lat, true_lon, strict=True)])  # fmt: skip
    probs[[0, 1], top] = 0.8
    offset = np.random.default_rng(0).normal(size=(2, 3, 2))  # other cells' offsets: noise
    east, north = to_tangent(cells.centroid_lat[top], cells.centroid_lon[top], true_lat, true_lon)
    offset[[0, 1], top] = np.stack([east, north], -1) / cells.scale_km[top, None]
    lat, lon = points.make_point("hybrid", cells).locate({"probs": probs, "offset": offset})
    np.testing.assert_allclose(lat, true_lat, atol=1e-6)
    np.testing.assert_allclose(lon, true_lon, atol=1e-6)


def _gallery(cells: CellPartition, **kw) -> tuple[Gallery, np.ndarray, np.ndarray, np.ndarray]:
    """Six images, two per cell, with 3-d embeddings; each image 5 km north-east of its cell."""
    labels = np.array([0, 0, 1, 1, 2, 2])
    emb = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0.6, 0.8], [0, 0, 1], [0.6, 0, 0.8]])
    lat = cells.centroid_lat[labels] + 0.01 * np.arange(1, 7)
    lon = cells.centroid_lon[labels] + 0.01 * np.arange(1, 7)
    order = np.array([3, 0, 5, 1, 4, 2])  # stored sorted by cell whatever the input order
    g = Gallery.build(emb[order], lat[order], lon[order], labels[order], len(cells), "abc", **kw)
    return g, emb, lat, lon


@pytest.mark.parametrize("ivf", [None, 2])
def test_retrieval_answers_the_nearest_image_inside_the_top_cells(cells, ivf):
    g, _, lat, lon = _gallery(cells, ivf=ivf)
    est = points.Retrieval(cells, g, k=2)
    # The query is nearest image 4 (cell 2), but cell 2 is not in the top 2 cells.
    query = np.array([[0.1, 0.3, 1.0]])  # dots: 0.1, 0.26, 0.3, 0.98, 1.0, 0.86
    probs = np.array([[0.5, 0.3, 0.2]])
    got = est.locate({"probs": probs, "embedding": query})
    np.testing.assert_allclose(np.ravel(got), [lat[3], lon[3]], atol=1e-9)  # image 3: cell 1
    probs_c = np.array([[0.1, 0.3, 0.6]])  # now cell 2 is in the top 2: image 4 wins
    got = est.locate({"probs": probs_c, "embedding": query})
    np.testing.assert_allclose(np.ravel(got), [lat[4], lon[4]], atol=1e-9)
    # Never outside the top-k cells, whatever the query: answers are images 0-3 (cells 0, 1).
    q = np.random.default_rng(1).normal(size=(50, 3))
    la, lo = est.locate({"probs": np.tile(probs, (50, 1)), "embedding": q})
    image = np.argmin(haversine_km(la[:, None], lo[:, None], lat, lon), axis=1)
    np.testing.assert_allclose(haversine_km(la, lo, lat[image], lon[image]), 0, atol=1e-6)
    assert set(image) <= {0, 1, 2, 3} and len(set(image)) > 1


def test_retrieval_mean_of_m_neighbours_and_fallback(cells):
    g, emb, lat, lon = _gallery(cells)
    query = np.array([[0.1, 0.3, 1.0]])
    got = points.Retrieval(cells, g, k=2, m=2).locate(
        {"probs": np.array([[0.5, 0.3, 0.2]]), "embedding": query}
    )
    want = latlon(unit(lat[3], lon[3]) + unit(lat[2], lon[2]))  # the two nearest in cells 0, 1
    np.testing.assert_allclose(np.ravel(got), want, atol=1e-9)
    empty = Gallery.build(emb[:2], lat[:2], lon[:2], np.array([0, 0]), len(cells), "abc")
    got = points.Retrieval(cells, empty, k=1).locate(
        {"probs": np.array([[0.1, 0.2, 0.7]]), "embedding": query}
    )  # no gallery image in cell 2: its centroid
    np.testing.assert_allclose(np.ravel(got), [cells.centroid_lat[2], cells.centroid_lon[2]])


def test_registry_errors_and_extension(cells, monkeypatch):
    with pytest.raises(GeovitError, match="'nope' is not one of top1, weighted, hybrid"):
        points.make_point("nope", cells)
    with pytest.raises(GeovitError, match="needs --index"):
        points.make_point("retrieval", cells)
    with pytest.raises(GeovitError, match="--point weighted uses no --index"):
        points.make_point("weighted", cells, _gallery(cells)[0])
    monkeypatch.setattr(points, "POINTS", dict(points.POINTS))

    @points.register
    class Centre(points.PointEstimator):  # a new estimator is one registered class
        name, description = "centre", "S2 cell centre"

        def locate(self, outputs):
            top = points.top_cells(outputs["probs"])
            return self.cells.center_lat[top], self.cells.center_lon[top]

    lat, _ = points.make_point("centre", cells).locate({"probs": np.eye(3)})
    np.testing.assert_array_equal(lat, cells.center_lat)


def test_gallery_file_roundtrip_and_refusals(cells, tmp_path):
    g = _gallery(cells)[0]
    path = g.save(tmp_path / "gallery.faiss")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.faiss"]  # no temp left
    back = Gallery.load(path, fingerprint="abc")
    q = np.random.default_rng(2).normal(size=(8, 3))
    allowed = np.array([[0, 2]] * 8)
    np.testing.assert_array_equal(back.nearest(q, allowed, 2), g.nearest(q, allowed, 2))
    np.testing.assert_array_equal(back.lat, g.lat)
    with pytest.raises(GeovitError, match="built with another model") as err:
        Gallery.load(path, fingerprint="xyz")
    assert "\n" not in str(err.value)
    (tmp_path / "bad.faiss").write_bytes(b"not a gallery")
    with pytest.raises(GeovitError, match="not a geovit gallery"):
        Gallery.load(tmp_path / "bad.faiss")
    with pytest.raises(GeovitError, match="does not exist"):
        Gallery.load(tmp_path / "missing.faiss")
    with pytest.raises(GeovitError, match="dimensions"):
        g.nearest(np.ones((1, 4)), allowed[:1])
