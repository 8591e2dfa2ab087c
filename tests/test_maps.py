"""Probability maps: projections, basemap, agreement with predict, offline PNG and HTML; cell
GeoJSON rings checked against s2 cell assignment with matplotlib's point-in-polygon."""

from __future__ import annotations

import dataclasses
import json
import re

import matplotlib
import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image
from typer.testing import CliRunner

from geovit.basemap import load_basemap
from geovit.cells import CellPartition
from geovit.cli import app
from geovit.errors import GeovitError
from geovit.geo import EARTH_RADIUS_KM, latlon_to_xyz
from geovit.geojson import cell_rings, partition_geojson
from geovit.maps import (
    Projection,
    cell_value_map,
    choose_projection,
    densify,
    map_image,
    probability_map,
    probability_map_html,
)

matplotlib.use("Agg")


def _shoelace(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 0.5 * np.abs((x * np.roll(y, -1, -1) - np.roll(x, -1, -1) * y).sum(-1))


@pytest.mark.parametrize(
    "proj",
    [
        Projection("albers", lon0=-112, lat0=39, lat1=33, lat2=45),
        Projection("equal_earth", lon0=0),
        Projection("equal_earth", lon0=150),
    ],
)
def test_projections_are_equal_area(proj):
    """A small lat/lon box has spherical area R^2 dlon (sin lat2 - sin lat1) (hand formula)."""
    lat0 = np.array([-60.0, -10.0, 0.0, 25.0, 47.0, 70.0])
    lon0 = proj.lon0 + np.array([-150.0, -40.0, 3.0, 10.0, 60.0, 120.0]) / (
        4 if proj.kind == "albers" else 1
    )
    d = 0.05
    lat = np.stack([lat0, lat0, lat0 + d, lat0 + d], 1)
    lon = np.stack([lon0, lon0 + d, lon0 + d, lon0], 1)
    x, y = proj(lat, lon)
    sphere = (
        EARTH_RADIUS_KM**2
        * np.radians(d)
        * (np.sin(np.radians(lat0 + d)) - np.sin(np.radians(lat0)))
    )
    np.testing.assert_allclose(_shoelace(x, y), sphere, rtol=2e-3)


def test_albers_true_scale_on_standard_parallels():
    proj = Projection("albers", lon0=-100, lat0=40, lat1=30, lat2=50)
    for phi in (30.0, 50.0):
        x, y = proj(np.array([phi, phi]), np.array([-100.0, -99.0]))
        np.testing.assert_allclose(
            np.hypot(np.diff(x), np.diff(y)),
            EARTH_RADIUS_KM * np.radians(1) * np.cos(np.radians(phi)),
            rtol=1e-4,
        )


def test_choose_projection_by_extent():
    west_us = choose_projection(np.array([31.0, 49.0]), np.array([-125.0, -102.0]))
    assert west_us.kind == "albers" and -120 < west_us.lon0 < -108
    assert 31 < west_us.lat1 < west_us.lat2 < 49
    world = choose_projection(np.array([-50.0, 70.0]), np.array([-170.0, 175.0]))
    assert world.kind == "equal_earth"
    pacific = choose_projection(np.array([-45.0, -35.0]), np.array([170.0, -175.0]))
    assert pacific.kind == "albers" and abs(abs(pacific.lon0) - 177.5) < 1e-6


def test_densified_edges_lie_on_great_circles():
    lat = np.array([[10.0, 10.0, 30.0, 30.0]])
    lon = np.array([[-20.0, 20.0, 20.0, -20.0]])
    dlat, dlon = densify(lat, lon, n=5)
    assert dlat.shape == (1, 20)
    pts = latlon_to_xyz(dlat[0], dlon[0])
    a, b = latlon_to_xyz(lat[0, :2], lon[0, :2])
    normal = np.cross(a, b)
    np.testing.assert_allclose(pts[:5] @ normal, 0, atol=1e-12)  # first edge
    assert dlat[0, 2] > 10.5  # the geodesic bulges poleward of the parallel


def _segment_distance_deg(lines: list[np.ndarray], lat: float, lon: float) -> float:
    """Smallest distance (in local-degree units) from a point to any segment of the lines."""
    p = np.array([lon * np.cos(np.radians(lat)), lat])
    best = np.inf
    for line in lines:
        q = line * [np.cos(np.radians(lat)), 1.0]
        a, b = q[:-1], q[1:]
        ab = b - a
        t = np.clip(((p - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-18), 0, 1)
        best = min(best, float(np.hypot(*(a + t[:, None] * ab - p).T).min()))
    return best


def test_basemap_has_us_state_lines_and_borders():
    us = load_basemap((-125.0, 30.0, -100.0, 50.0))
    admin1 = us.lines("admin1", (-125.0, 30.0, -100.0, 50.0))
    # Oregon-California (42 N), Utah-Arizona (37 N), Colorado-Wyoming (41 N): on a state line.
    for lat, lon in [(42.0, -121.5), (37.0, -112.0), (41.0, -106.0)]:
        assert _segment_distance_deg(admin1, lat, lon) < 0.05
    # The middle of Nevada and of Utah are far from any state line.
    for lat, lon in [(39.3, -116.8), (39.3, -111.6)]:
        assert _segment_distance_deg(admin1, lat, lon) > 0.5
    # The US-Canada border along 49 N, in both the detailed and the world lines.
    world = load_basemap()
    for bm in (us, world):
        assert _segment_distance_deg(bm.lines("admin0"), 49.0, -110.0) < 0.05
    assert _segment_distance_deg(world.lines("coastline"), 51.5, 1.3) < 0.5  # Kent coast
    assert "Natural Earth" in us.attribution


def test_basemap_folder_errors(tmp_path):
    with pytest.raises(GeovitError, match="no ne_"):
        load_basemap(source=tmp_path)
    with pytest.raises(GeovitError, match="does not exist"):
        load_basemap(source=tmp_path / "missing")


def test_basemap_reads_a_users_natural_earth_folder_finest_scale_first(tmp_path):
    import shapefile

    def write(scale: str, stem: str, lines: list[list[tuple[float, float]]]) -> None:
        with shapefile.Writer(str(tmp_path / scale / f"ne_{scale}_{stem}")) as w:
            w.field("name", "C")
            w.line(lines)
            w.record("x")

    fine = [[(-111.05, 41.0), (-104.05, 41.0)], [(-104.05, 41.0), (-104.05, 45.0)]]
    for scale, lines in (("10m", fine), ("110m", [[(0.0, 0.0), (1.0, 1.0)]])):
        (tmp_path / scale).mkdir()
        for stem in ("coastline", "admin_0_boundary_lines_land", "admin_1_states_provinces_lines"):
            write(scale, stem, lines)
    basemap = load_basemap(source=tmp_path)
    for key in ("coastline", "admin0", "admin1"):
        got = basemap.layers[key]
        assert len(got) == 2  # one shape, two parts: the 10m file, not the 110m one
        np.testing.assert_array_equal(got[0], np.array(fine[0]))
        np.testing.assert_array_equal(got[1], np.array(fine[1]))


def test_map_agrees_with_predict(predictor, photo, tmp_path, offline):
    lat, lon = 40.7, -111.9
    png, page = tmp_path / "map.png", tmp_path / "map.html"
    cmap = map_image(predictor, photo, lat=lat, lon=lon, top_k=4, png=png, html_path=page)
    pred = predictor.predict(photo, top_k=4)
    np.testing.assert_allclose(cmap.probs, pred.all_probs, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(cmap.top, pred.indices)
    # The coloured polygons carry exactly these probabilities, cell by cell.
    ax = cmap.figure.axes[0]
    np.testing.assert_allclose(np.asarray(ax.collections[0].get_array()), pred.all_probs, rtol=1e-6)
    labels = " ".join(t.get_text() for t in ax.texts)
    assert all(tok in labels for tok in pred.tokens)
    assert png.stat().st_size > 30_000 and Image.open(png).size[0] > 600
    text = page.read_text()
    data = json.loads(
        re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)[1]
    )
    np.testing.assert_allclose(data["probs"], pred.all_probs, rtol=1e-5)
    assert data["top"] == [int(i) for i in pred.indices]
    assert data["tokens"] == [str(t) for t in predictor.cells.tokens]
    assert data["truth"] is not None


class _Calls:
    """Wraps a function and records the size of its first argument on each call."""

    def __init__(self, fn):
        self.fn, self.sizes = fn, []

    def __call__(self, first, *args, **kw):
        self.sizes.append(np.size(first))
        return self.fn(first, *args, **kw)


def test_one_map_builds_the_geometry_once_from_cached_corners(
    predictor, photo, tmp_path, offline, monkeypatch
):
    import geovit.maps as maps_module
    from geovit import s2 as gs2

    fresh = dataclasses.replace(predictor.cells)  # no cached facts yet
    monkeypatch.setattr(predictor, "cells", fresh)
    calls = {
        "geometry": _Calls(maps_module.cell_geometry),
        "corners": _Calls(gs2.cell_vertices_xyz),
        "tokens": _Calls(gs2.cell_id_to_token),
        "to_xyz": _Calls(maps_module.latlon_to_xyz),
    }
    monkeypatch.setattr(maps_module, "cell_geometry", calls["geometry"])
    monkeypatch.setattr(maps_module, "latlon_to_xyz", calls["to_xyz"])
    monkeypatch.setattr(gs2, "cell_vertices_xyz", calls["corners"])
    monkeypatch.setattr(gs2, "cell_id_to_token", calls["tokens"])
    k = len(fresh)
    map_image(predictor, photo, lat=40.7, lon=-111.9, png=tmp_path / "m.png",
              html_path=tmp_path / "m.html")  # fmt: skip
    assert len(calls["geometry"].sizes) == 1  # the PNG and the HTML share one geometry
    assert calls["corners"].sizes == [k]
    assert calls["tokens"].sizes == [k]
    # The corners go from S2's unit vectors to the densified polygons directly, never through
    # degrees and back (only single points, the truth line's ends, are converted).
    assert all(n <= 2 for n in calls["to_xyz"].sizes)


def test_partition_geojson_is_linear_in_the_cells(predictor, monkeypatch):
    from geovit import s2 as gs2

    fresh = dataclasses.replace(predictor.cells)
    tokens, corners = _Calls(gs2.cell_id_to_token), _Calls(gs2.cell_vertices_xyz)
    monkeypatch.setattr(gs2, "cell_id_to_token", tokens)
    monkeypatch.setattr(gs2, "cell_vertices_xyz", corners)
    fc = partition_geojson(fresh)
    assert len(fc["features"]) == len(fresh)
    assert [f["properties"]["token"] for f in fc["features"]] == list(fresh.tokens)
    assert tokens.sizes == [len(fresh)]  # once for the partition, not once per cell
    assert corners.sizes == [len(fresh)]


def test_html_is_self_contained(predictor, tmp_path, offline):
    k = len(predictor.cells)
    probs = np.full(k, 1.0 / k)
    page = probability_map_html(
        predictor.cells, probs, title="<evil & title>", path=tmp_path / "m.html"
    )
    assert (tmp_path / "m.html").read_text() == page
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link[^>]*\bhref=", page)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)  # only the SVG namespace
    assert "<evil &amp; title>" not in page and "&lt;evil &amp; title&gt;" in page
    assert len(re.findall(r'<path d="M[^"]+Z" fill="#[0-9a-f]{6}" data-i="\d+"/>', page)) == k
    assert "admin1" in page and "coastline" in page


def test_world_and_value_maps_render(tmp_path, offline):
    rng = np.random.default_rng(0)
    lat = np.degrees(np.arcsin(rng.uniform(-0.8, 0.95, 3000)))
    lon = rng.uniform(-180, 180, 3000)
    cells = CellPartition.build(lat, lon, t1=200, t2=10)
    probs = rng.dirichlet(np.ones(len(cells)))
    m = probability_map(cells, probs, lat=-33.9, lon=151.2, log=True, path=tmp_path / "w.png")
    assert m.projection.kind == "equal_earth"
    assert (tmp_path / "w.png").stat().st_size > 30_000
    acc = rng.random(len(cells))
    acc[::3] = np.nan
    fig = cell_value_map(
        cells, acc, label="accuracy", title="acc", vmin=0, vmax=1, path=tmp_path / "a.png"
    )
    arr = fig.axes[0].collections[0].get_array()
    assert np.ma.count_masked(arr) == int(np.isnan(acc).sum())
    assert (tmp_path / "a.png").stat().st_size > 30_000
    with pytest.raises(GeovitError, match="cells"):
        probability_map(cells, probs[:-1])


def test_map_cli(tiny_checkpoint, photo, predictor, tmp_path):
    out = tmp_path / "m.png"
    res = CliRunner().invoke(
        app, ["map", str(photo), "-c", str(tiny_checkpoint), "-o", str(out), "--lat", "40",
              "--lon", "-105", "--top-k", "3", "--log"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 30_000 and out.with_suffix(".html").stat().st_size > 5_000
    pred = predictor.predict(photo, top_k=3)
    for rank, tok in enumerate(pred.tokens, start=1):
        assert f"{rank}. {tok} " in res.output
    res = CliRunner().invoke(
        app, ["map", str(photo), "-c", str(tiny_checkpoint), "-o", str(out), "--lon", "3"]
    )
    assert res.exit_code == 2 and "--lat" in res.output


def test_cell_rings_contain_their_points_across_antimeridian_and_poles():
    """Face and level-1/2 cells: the ring a random point falls in (lon tried +-360) is the
    cell s2 assigns it to, for all but a sliver near the densified edges."""
    rng = np.random.default_rng(0)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 3000)))
    lon = rng.uniform(-180, 180, 3000)
    for t1 in (10_000, 400):
        cells = CellPartition.build(lat, lon, t1=t1, t2=1)
        rings = [MplPath(np.array(r)) for r in cell_rings(cells, np.arange(len(cells)))]
        plat = np.degrees(np.arcsin(rng.uniform(-0.999, 0.999, 2000)))
        plon = rng.uniform(-180, 180, 2000)
        truth = cells.assign(plat, plon)
        inside = np.zeros((len(rings), plat.size), dtype=bool)
        for shift in (-360.0, 0.0, 360.0):
            pts = np.column_stack([plon + shift, plat])
            inside |= np.stack([r.contains_points(pts) for r in rings])
        assert np.mean(inside[truth, np.arange(plat.size)]) > 0.99
        assert np.mean(inside.sum(axis=0) == 1) > 0.99  # rings tile the map without overlap


def _pixels(fig) -> np.ndarray:
    """The figure rendered (no trimming) as an (H, W, 3) uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def _colour_at(fig, ax, x: float, y: float) -> np.ndarray:
    """Median colour of the 5x5 pixels around data point (x, y) (thin lines do not move it)."""
    img = _pixels(fig)
    px, py = ax.transData.transform((x, y))
    r, c = int(img.shape[0] - py), int(px)
    return np.median(img[r - 2 : r + 3, c - 2 : c + 3].reshape(-1, 3), axis=0)


def test_probability_colours_are_fixed_and_comparable_across_images(predictor, offline):
    """A near-uniform guess is no longer drawn bright: every map uses log 1e-4..1, so a cell at
    1/K gets the colour inferno((log10(1/K) + 4) / 4) whatever the image's maximum."""
    from matplotlib import colormaps

    cells = predictor.cells
    k = len(cells)
    uniform = np.full(k, 1.0 / k)
    peaked = np.full(k, 0.1 / (k - 1))
    peaked[0] = 0.9
    for probs in (uniform, peaked):
        m = probability_map(cells, probs, top_k=0)
        ax = m.figure.axes[0]
        polys = [np.asarray(p.vertices) for p in ax.collections[0].get_paths()]
        area = [_shoelace(v[:, 0], v[:, 1]) for v in polys]
        cell = 1 + int(np.argmax(area[1:]))  # the biggest cell other than the peak
        x, y = polys[cell].mean(axis=0)
        want = np.array(colormaps["inferno"]((np.log10(probs[cell]) + 4) / 4)[:3]) * 255
        np.testing.assert_allclose(_colour_at(m.figure, ax, x, y), want, atol=10)
        bar = m.figure.axes[1].get_xlabel()
        assert "log scale, fixed 0.0001 to 1 for every image" in bar


def test_map_marks_best_guess_line_to_truth_scale_bar_and_graticule(predictor, offline):
    cells = predictor.cells
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(len(cells)))
    lat, lon = 44.0, -100.0
    m = probability_map(cells, probs, lat=lat, lon=lon, top_k=3)
    ax = m.figure.axes[0]
    best = int(np.argmax(probs))
    b_lat, b_lon = float(cells.centroid_lat[best]), float(cells.centroid_lon[best])
    # Reference distance by the haversine formula written out here.
    p1, p2, dl = np.radians(b_lat), np.radians(lat), np.radians(lon - b_lon)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    km = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(a))
    assert m.best == pytest.approx((b_lat, b_lon)) and m.error_km == pytest.approx(km, rel=1e-9)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "best guess" in legend and f"true location, {km:,.0f} km from the best guess" in legend
    # The dashed red line runs from the projected best guess to the projected truth.
    red = [ln for ln in ax.lines if ln.get_color() == "red" and ln.get_linestyle() == "--"]
    xy = np.concatenate([ln.get_xydata() for ln in red])
    ends = np.column_stack(m.projection(np.array([b_lat, lat]), np.array([b_lon, lon])))
    np.testing.assert_allclose(xy[[0, -1]], ends, atol=1e-6)
    # A round scale bar whose label matches its drawn length at the centre's scale.
    bar = next(ln for ln in ax.lines if ln.get_gid() == "scalebar")
    label = next(t.get_text() for t in ax.texts if t.get_text().endswith("km (at the centre)"))
    stated = float(label.split()[0])
    assert stated / 10 ** np.floor(np.log10(stated)) in (1, 2, 5)
    (x0, _), (x1, _) = bar.get_xydata()
    frame = ax.get_xlim()
    assert 0.08 < (x1 - x0) / (frame[1] - frame[0]) < 0.25
    # Graticule: dashed lines and degree labels; cell labels say what the name is.
    texts = " ".join(t.get_text() for t in ax.texts)
    assert re.search(r"\d+°[NS]", texts) and re.search(r"\d+°[EW]", texts)
    assert "most photos near" in texts


def test_html_map_has_truth_line_distance_graticule_and_fixed_scale(predictor, offline):
    cells = predictor.cells
    probs = np.random.default_rng(2).dirichlet(np.ones(len(cells)))
    page = probability_map_html(cells, probs, lat=44.0, lon=-100.0)
    data = json.loads(
        re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)[1]
    )
    png = probability_map(cells, probs, lat=44.0, lon=-100.0)
    assert data["error_km"] == pytest.approx(png.error_km, abs=0.05)
    assert data["scale"] == ["probability (log scale, fixed 0.0001 to 1 for every image)", 1e-4, 1]
    assert 'class="truthline"' in page and 'class="graticule"' in page
    assert data["scalebar"][0] > 0 and any("°" in t for *_, t in data["ticks"])
    assert "most photos near" in page
