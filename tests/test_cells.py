"""Adaptive partition against a brute-force recursive reference built on s2geometry."""

import dataclasses
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import s2geometry as s2
from typer.testing import CliRunner

from geovit.cells import CellPartition
from geovit.cli import app
from geovit.errors import GeovitError


def clustered_points(seed: int, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Dense towns, sparse countryside, a cluster on the antimeridian and one at a pole."""
    rng = np.random.default_rng(seed)
    towns = np.array([[48.85, 2.35], [40.7, -74.0], [-33.9, 151.2], [0.0, 179.9], [89.5, 0.0]])
    k = rng.integers(0, len(towns), n)
    spread = rng.choice([0.01, 0.3, 3.0], n, p=[0.4, 0.4, 0.2])
    lat = np.clip(towns[k, 0] + rng.normal(0, 1, n) * spread, -90, 90)
    lon = (towns[k, 1] + rng.normal(0, 1, n) * spread + 180) % 360 - 180
    sparse = rng.uniform(-1, 1, n // 10)
    return (
        np.concatenate([lat, np.degrees(np.arcsin(sparse))]),
        np.concatenate([lon, rng.uniform(-180, 180, sparse.size)]),
    )


def reference(lat, lon, t1, t2, min_level=0, max_level=30):
    """Plain recursive PlaNet splitting with the library's ids: {cell id: [point indices]}."""
    leaf = [s2.S2CellId(s2.S2LatLng.FromDegrees(a, b)) for a, b in zip(lat, lon, strict=True)]
    leaves = {}

    def visit(cell, members):
        if cell.level() < min_level or (len(members) > t1 and cell.level() < max_level):
            for k in range(4):
                child = cell.child(k)
                inside = [m for m in members if child.contains(leaf[m])]
                if inside:
                    visit(child, inside)
        else:
            leaves[cell.id()] = members

    for face in range(6):
        cell = s2.S2CellId.FromFacePosLevel(face, 0, 0)
        members = [m for m in range(len(leaf)) if cell.contains(leaf[m])]
        if members:
            visit(cell, members)
    return {cid: m for cid, m in leaves.items() if len(m) >= t2}


def hand_centroid(lat, lon, members):
    """Normalized sum of unit vectors, one point at a time with the math module."""
    x = y = z = 0.0
    for m in members:
        phi, lam = math.radians(lat[m]), math.radians(lon[m])
        x += math.cos(phi) * math.cos(lam)
        y += math.cos(phi) * math.sin(lam)
        z += math.sin(phi)
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


@pytest.mark.parametrize(
    ("seed", "t1", "t2", "min_level", "max_level"),
    [(0, 100, 20, 0, 30), (1, 30, 5, 0, 30), (2, 50, 0, 3, 30), (3, 40, 10, 0, 9)],
)
def test_build_matches_brute_force(seed, t1, t2, min_level, max_level):
    lat, lon = clustered_points(seed)
    ref = reference(lat, lon, t1, t2, min_level, max_level)
    cells = CellPartition.build(lat, lon, t1=t1, t2=t2, min_level=min_level, max_level=max_level)
    ref_ids = sorted(ref)
    np.testing.assert_array_equal(cells.cell_ids, np.array(ref_ids, dtype=np.uint64))
    np.testing.assert_array_equal(cells.counts, [len(ref[c]) for c in ref_ids])
    assert cells.levels.tolist() == [s2.S2CellId(c).level() for c in ref_ids]
    assert cells.n_points == lat.size
    assert cells.n_dropped == lat.size - sum(len(m) for m in ref.values())
    assert (cells.t1, cells.t2, cells.min_level, cells.max_level) == (t1, t2, min_level, max_level)
    assert cells.levels.min() >= min_level and cells.levels.max() <= max_level
    centroids = np.array([hand_centroid(lat, lon, ref[c]) for c in ref_ids])
    np.testing.assert_allclose(cells.centroid_lat, centroids[:, 0], atol=1e-9)
    lon_gap = (cells.centroid_lon - centroids[:, 1] + 180) % 360 - 180
    np.testing.assert_allclose(lon_gap, 0, atol=1e-9)
    centers = [s2.S2LatLng(s2.S2Cell(s2.S2CellId(c)).GetCenter()) for c in ref_ids]
    np.testing.assert_allclose(cells.center_lat, [p.lat().degrees() for p in centers], atol=1e-12)
    np.testing.assert_allclose(cells.center_lon, [p.lng().degrees() for p in centers], atol=1e-12)
    assert cells.tokens.tolist() == [s2.S2CellId(c).ToToken() for c in ref_ids]
    if t2 > 1:
        assert cells.n_dropped > 0  # the sparse points exercise pruning


def test_identical_points_stop_at_max_level():
    lat = np.r_[np.full(300, 37.0), np.full(10, -20.0)]
    lon = np.r_[np.full(300, -122.0), np.full(10, 30.0)]
    cells = CellPartition.build(lat, lon, t1=100, t2=20)
    assert len(cells) == 1 and cells.levels[0] == 30 and cells.counts[0] == 300
    assert cells.n_dropped == 10
    ref = s2.S2CellId(s2.S2LatLng.FromDegrees(37.0, -122.0)).id()
    assert int(cells.cell_ids[0]) == ref
    assert cells.centroid_lat[0] == pytest.approx(37.0, abs=1e-12)
    assert cells.centroid_lon[0] == pytest.approx(-122.0, abs=1e-12)


def test_assign_matches_library_containment():
    lat, lon = clustered_points(4)
    cells = CellPartition.build(lat, lon, t1=60, t2=15)
    rng = np.random.default_rng(9)
    q_lat = np.r_[lat[:500], np.degrees(np.arcsin(rng.uniform(-1, 1, 1500)))]
    q_lon = np.r_[lon[:500], rng.uniform(-180, 180, 1500)]
    got = cells.assign(q_lat, q_lon)
    kept = [s2.S2CellId(int(c)) for c in cells.cell_ids]
    for a, b, label in zip(q_lat, q_lon, got, strict=True):
        leaf = s2.S2CellId(s2.S2LatLng.FromDegrees(a, b))
        hits = [k for k, c in enumerate(kept) if c.contains(leaf)]
        assert hits == ([] if label == -1 else [label])
    assert (got == -1).sum() > 100  # pruned and empty areas exist
    # Training points land in their classes: label counts are the class counts.
    train = cells.assign(lat, lon)
    np.testing.assert_array_equal(
        np.bincount(train[train >= 0], minlength=len(cells)), cells.counts
    )
    assert (train == -1).sum() == cells.n_dropped


def test_assign_bad_coordinates_give_minus_one():
    lat, lon = clustered_points(5, n=1000)
    cells = CellPartition.build(lat, lon, t1=50, t2=5)
    got = cells.assign([48.85, np.nan, 95.0, 48.85], [2.35, 2.35, 2.35, 200.0])
    assert got[0] >= 0
    assert got[1:].tolist() == [-1, -1, -1]


def test_input_order_does_not_matter():
    lat, lon = clustered_points(6)
    names = np.array(["a", "b", "c"])[np.arange(lat.size) % 3]
    one = CellPartition.build(lat, lon, t1=40, t2=8, names=names)
    perm = np.random.default_rng(0).permutation(lat.size)
    two = CellPartition.build(lat[perm], lon[perm], t1=40, t2=8, names=names[perm])
    np.testing.assert_array_equal(one.cell_ids, two.cell_ids)
    np.testing.assert_array_equal(one.counts, two.counts)
    np.testing.assert_array_equal(one.names, two.names)
    np.testing.assert_allclose(one.centroid_lat, two.centroid_lat, atol=1e-12)
    assert np.all(np.diff(one.cell_ids.astype(np.float64)) > 0)


def test_names_are_majorities_with_deterministic_ties():
    # Three cells far apart; within each, the names below vote.
    groups = [
        ((10.0, 10.0), ["x", "y", "y", "", None]),  # y wins; blanks do not vote
        ((-30.0, 100.0), ["b", "a", "a", "b"]),  # tie: alphabetical first
        ((50.0, -100.0), ["", None, "", None]),  # nobody named: ""
    ]
    lat = np.concatenate([np.full(len(n), p[0]) for p, n in groups])
    lon = np.concatenate([np.full(len(n), p[1]) for p, n in groups])
    names = np.array([v for _, n in groups for v in n], dtype=object)
    cells = CellPartition.build(lat, lon, t1=3, t2=1, names=names)
    by_cell = {int(c): nm for c, nm in zip(cells.cell_ids, cells.names, strict=True)}
    for (a, b), votes in groups:
        leaf = s2.S2CellId(s2.S2LatLng.FromDegrees(a, b))
        cid = next(c for c in by_cell if s2.S2CellId(c).contains(leaf))
        counted = Counter(v for v in votes if v)
        top = max(counted.values(), default=0)
        expected = min((k for k, v in counted.items() if v == top), default="")
        assert by_cell[cid] == expected


def test_save_load_round_trip(tmp_path):
    lat, lon = clustered_points(7, n=1500)
    names = np.where(lat > 0, "north", "south")
    cells = CellPartition.build(lat, lon, t1=40, t2=5, names=names)
    path = cells.save(tmp_path / "sub" / "cells.parquet")
    assert sorted(p.name for p in path.parent.iterdir()) == ["cells.parquet"]  # no temp left
    back = CellPartition.load(path)
    for field in ("cell_ids", "levels", "counts", "centroid_lat", "centroid_lon", "names"):
        np.testing.assert_array_equal(getattr(back, field), getattr(cells, field))
    for field in ("t1", "t2", "n_points", "n_dropped", "min_level", "max_level"):
        assert getattr(back, field) == getattr(cells, field)
    # A checkpoint stores the frame as a dict of lists; that must round-trip too.
    lists = CellPartition.from_frame(pd.DataFrame(cells.to_frame().to_dict("list")))
    np.testing.assert_array_equal(lists.cell_ids, cells.cell_ids)
    assert lists.summary() == cells.summary()


def test_load_rejects_missing_garbled_and_foreign_files(tmp_path):
    with pytest.raises(GeovitError, match="does not exist"):
        CellPartition.load(tmp_path / "nope.parquet")
    garbled = tmp_path / "garbled.parquet"
    garbled.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(GeovitError, match="not a readable Parquet"):
        CellPartition.load(garbled)
    foreign = tmp_path / "foreign.parquet"
    pd.DataFrame({"token": ["89c25"]}).to_parquet(foreign)
    with pytest.raises(GeovitError, match="no version"):
        CellPartition.load(foreign)
    lat, lon = clustered_points(8, n=500)
    frame = CellPartition.build(lat, lon, t1=50, t2=5).to_frame()
    with pytest.raises(GeovitError, match="missing columns"):
        CellPartition.from_frame(frame.drop(columns="centroid_lat"))
    with pytest.raises(GeovitError, match="sorted and disjoint"):
        CellPartition.from_frame(frame.iloc[::-1])


def test_bad_build_inputs_are_errors():
    with pytest.raises(GeovitError, match="off the globe"):
        CellPartition.build([0.0, 91.0], [0.0, 0.0])
    with pytest.raises(GeovitError, match="NaN"):
        CellPartition.build([0.0, np.nan], [0.0, 0.0])
    with pytest.raises(GeovitError, match="t1"):
        CellPartition.build([0.0], [0.0], t1=10, t2=20)
    with pytest.raises(GeovitError, match="levels"):
        CellPartition.build([0.0], [0.0], min_level=5, max_level=4)
    with pytest.raises(GeovitError, match="no cell holds"):
        CellPartition.build([0.0, 50.0], [0.0, 50.0], t1=100, t2=2)
    with pytest.raises(GeovitError, match="names"):
        CellPartition.build([0.0, 1.0], [0.0, 1.0], names=["a"])


def test_summary_against_library_areas():
    lat, lon = clustered_points(10)
    cells = CellPartition.build(lat, lon, t1=80, t2=10)
    s = cells.summary()
    assert s["classes"] == len(cells)
    assert s["points_kept"] + s["points_dropped"] == s["points"] == lat.size
    assert sum(s["levels"].values()) == len(cells)
    assert s["levels"] == dict(Counter(int(lv) for lv in cells.levels))
    areas = [s2.S2Cell(s2.S2CellId(int(c))).ApproxArea() * 6371.0**2 for c in cells.cell_ids]
    assert s["smallest_km2"] == pytest.approx(min(areas), rel=1e-9)
    assert s["largest_km2"] == pytest.approx(max(areas), rel=1e-9)


def test_polygons_contain_centroids_cell():
    lat, lon = clustered_points(11, n=800)
    cells = CellPartition.build(lat, lon, t1=50, t2=5)
    p_lat, p_lon = cells.polygons()
    assert p_lat.shape == (len(cells), 4)
    ref = s2.S2LatLng(s2.S2Cell(s2.S2CellId(int(cells.cell_ids[0]))).GetVertex(2))
    assert p_lat[0, 2] == pytest.approx(ref.lat().degrees(), abs=1e-12)
    assert p_lon[0, 2] == pytest.approx(ref.lng().degrees(), abs=1e-12)


def test_cli_build_and_show(tmp_path):
    lat, lon = clustered_points(12, n=600)
    (tmp_path / "img").mkdir()
    rows = []
    for k, (a, b) in enumerate(zip(lat, lon, strict=True)):
        (tmp_path / "img" / f"{k}.jpg").write_bytes(b"")
        rows.append({"image": f"img/{k}.jpg", "lat": a, "lon": b, "city": f"c{k % 4}"})
    pd.DataFrame(rows).to_csv(tmp_path / "photos.csv", index=False)
    out = tmp_path / "cells.parquet"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "cells",
            "build",
            str(tmp_path / "photos.csv"),
            "--t1",
            "40",
            "--t2",
            "5",
            "--out",
            str(out),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    cells = CellPartition.load(out)
    assert cells.t1 == 40 and cells.t2 == 5
    assert 0 < cells.n_points < lat.size  # the train split only
    assert set(cells.names) <= {"c0", "c1", "c2", "c3"}
    assert f"{len(cells):,}" in result.output and "largest cell" in result.output
    shown = runner.invoke(app, ["cells", "show", str(out)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert f"{cells.n_dropped:,}" in shown.output and "cells per level" in shown.output
    missing = runner.invoke(app, ["cells", "show", str(tmp_path / "nope.parquet")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output


def test_cli_build_from_coordinates_only_with_all_points(tmp_path):
    """A table of coordinates (no image column) is enough; --all partitions every point, and the
    partition is the one CellPartition.build makes of all of them."""
    lat, lon = clustered_points(5, n=500)
    pd.DataFrame({"y": lat, "x": lon}).to_csv(tmp_path / "pts.csv", index=False)
    args = ["cells", "build", str(tmp_path / "pts.csv"), "--t1", "40", "--t2", "5"]
    unnamed = CliRunner().invoke(app, args)
    assert unnamed.exit_code == 2 and "--lat-col" in unnamed.output
    args += ["--lat-col", "y", "--lon-col", "x"]
    result = CliRunner().invoke(app, [*args, "--all", "--out", str(tmp_path / "all.parquet")])
    assert result.exit_code == 0, result.output
    got = CellPartition.load(tmp_path / "all.parquet")
    want = CellPartition.build(lat, lon, t1=40, t2=5)
    assert got.n_points == lat.size and list(got.tokens) == list(want.tokens)
    assert "held out as test" not in result.output
    split = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "train.parquet")])
    assert split.exit_code == 0, split.output
    assert 0 < CellPartition.load(tmp_path / "train.parquet").n_points < lat.size


class _Counting:
    """Wraps a function and records the size of its first argument on each call."""

    def __init__(self, fn):
        self.fn, self.sizes = fn, []

    def __call__(self, ids, *args, **kw):
        self.sizes.append(np.size(ids))
        return self.fn(ids, *args, **kw)


def test_cell_facts_are_computed_once_from_read_only_arrays(monkeypatch):
    from geovit import s2 as gs2

    lat, lon = clustered_points(13, n=800)
    cells = CellPartition.build(lat, lon, t1=50, t2=5)
    tokens, corners = _Counting(gs2.cell_id_to_token), _Counting(gs2.cell_vertices_xyz)
    monkeypatch.setattr(gs2, "cell_id_to_token", tokens)
    monkeypatch.setattr(gs2, "cell_vertices_xyz", corners)
    ref = [s2.S2CellId(int(c)).ToToken() for c in cells.cell_ids]
    assert [cells.tokens[i] for i in range(len(cells))] == ref
    assert tokens.sizes == [len(cells)]  # once for all K, not once per access
    p_lat, _ = cells.polygons()
    cells.polygons()
    assert corners.sizes == [len(cells)]
    np.testing.assert_array_equal(cells.polygons([2, 0])[0], p_lat[[2, 0]])
    assert corners.sizes == [len(cells), 2]  # a subset computes only its own corners
    # Nothing can change the arrays behind the cache: they are read-only copies.
    ids = cells.cell_ids.copy()
    with pytest.raises(ValueError, match="read-only"):
        cells.cell_ids[0] = 0
    with pytest.raises(ValueError, match="read-only"):
        cells.tokens[0] = "x"
    mine = ids.copy()
    copy = dataclasses.replace(cells, cell_ids=mine)
    mine[0] = 0  # the caller's own array stays writable, the partition keeps its copy
    np.testing.assert_array_equal(copy.cell_ids, ids)
