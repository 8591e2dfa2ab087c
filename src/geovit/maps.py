"""Maps of per-cell values: the model's probability over all cells, or any per-cell statistic.

Cells are drawn as their S2 polygons (edges densified along great circles) in a projection that
suits the extent: Albers equal-area conic for a region (the western US for OSV-Mini), Equal Earth
for the world (OSV-5M). Both are closed formulas in NumPy, so matplotlib is all we need (cartopy
would download Natural Earth on first use). Boundary lines come from geovit.basemap.

Two outputs share the geometry: a PNG (matplotlib, Agg) and a self-contained HTML page (inline
SVG + a little JavaScript, no network) with zoom, pan and a tooltip per cell. Unprojected GeoJSON
polygons are geovit.geojson's.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geovit.basemap import LAYERS, Basemap, load_basemap
from geovit.errors import GeovitError
from geovit.figures import save_figure
from geovit.fileio import write_text
from geovit.geo import EARTH_RADIUS_KM, haversine_km, latlon_to_xyz, xyz_to_latlon

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from geovit.cells import CellPartition
    from geovit.predictor import Predictor

# Equal Earth polynomial coefficients (Šavrič, Patterson & Jenny 2018).
_EE_A = (1.340264, -0.081106, 0.000893, 0.003796)
_WORLD_LON_SPAN = 100.0  # wider (or taller than _WORLD_LAT_SPAN) extents use the world projection
_WORLD_LAT_SPAN = 60.0
BASEMAP_STYLE = {  # line widths
    "graticule": 0.3,
    "frame": 0.8,
    "coastline": 0.7,
    "admin0": 0.6,
    "admin1": 0.35,
}
# Probability colours run over a fixed range, the same for every image, so two maps compare at a
# glance: log from PROB_FLOOR (lower values share the darkest colour) to 1, or linear 0 to 1.
PROB_FLOOR = 1e-4
PROB_CMAP = "inferno"
_GRATICULE_STEPS = (1, 2, 5, 10, 15, 30, 45, 60)  # degrees
_NICE = (1, 2, 5)


def wrap_lon(lon: np.ndarray | float) -> np.ndarray:
    """Longitude in [-180, 180)."""
    return (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0


@dataclass(frozen=True)
class Projection:
    """Spherical map projection to km: Albers equal-area conic or Equal Earth (both equal-area)."""

    kind: str  # "albers" | "equal_earth"
    lon0: float
    lat0: float = 0.0
    lat1: float = 0.0
    lat2: float = 0.0

    def __call__(
        self, lat: np.ndarray, lon: np.ndarray, wrap: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) in km of degrees lat/lon (any shape). Longitudes relative to lon0 are wrapped to
        [-180, 180) unless `wrap=False` (polygons already made continuous by the caller)."""
        phi = np.radians(np.asarray(lat, dtype=np.float64))
        rel = np.asarray(lon, dtype=np.float64) - self.lon0
        lam = np.radians(wrap_lon(rel) if wrap else rel)
        if self.kind == "equal_earth":
            a1, a2, a3, a4 = _EE_A
            th = np.arcsin(np.sqrt(3.0) / 2.0 * np.sin(phi))
            t2 = th * th
            t6 = t2 * t2 * t2
            x = (
                2
                * np.sqrt(3.0)
                * lam
                * np.cos(th)
                / (3 * (9 * a4 * t6 * t2 + 7 * a3 * t6 + 3 * a2 * t2 + a1))
            )
            y = th * (a1 + a2 * t2 + t6 * (a3 + a4 * t2))
            return EARTH_RADIUS_KM * x, EARTH_RADIUS_KM * y
        # Albers equal-area conic, spherical form (Snyder 1987, eqs. 14-1 to 14-4).
        p0, p1, p2 = np.radians([self.lat0, self.lat1, self.lat2])
        n = (np.sin(p1) + np.sin(p2)) / 2
        c = np.cos(p1) ** 2 + 2 * n * np.sin(p1)
        rho0 = np.sqrt(c - 2 * n * np.sin(p0)) / n
        rho = np.sqrt(c - 2 * n * np.sin(phi)) / n
        th = n * lam
        return EARTH_RADIUS_KM * rho * np.sin(th), EARTH_RADIUS_KM * (rho0 - rho * np.cos(th))

    @property
    def label(self) -> str:
        if self.kind == "equal_earth":
            return f"Equal Earth, central meridian {self.lon0:.0f}°"
        return f"Albers equal-area, parallels {self.lat1:.1f}° and {self.lat2:.1f}°"


def lon_extent(lon: np.ndarray) -> tuple[float, float]:
    """(west, east) of the smallest longitude interval holding all `lon` (may cross ±180:
    then east > 180)."""
    s = np.sort(wrap_lon(np.ravel(lon)))
    gaps = np.diff(np.r_[s, s[0] + 360.0])
    i = int(np.argmax(gaps))
    west = s[(i + 1) % len(s)]
    return float(west), float(west + 360.0 - gaps[i])


def choose_projection(lat: np.ndarray, lon: np.ndarray) -> Projection:
    """Albers for regional extents (standard parallels at 1/6 and 5/6 of the latitude range),
    Equal Earth for world-wide ones or extents straddling the equator (where a conic degenerates).
    """
    west, east = lon_extent(lon)
    south, north = float(np.min(lat)), float(np.max(lat))
    lon0 = float(wrap_lon((west + east) / 2))
    span = north - south
    lat1, lat2 = south + span / 6, north - span / 6
    straddles = abs(np.sin(np.radians(lat1)) + np.sin(np.radians(lat2))) < 0.2
    if east - west > _WORLD_LON_SPAN or span > _WORLD_LAT_SPAN or straddles:
        return Projection("equal_earth", lon0=0.0 if east - west > 180 else lon0)
    return Projection("albers", lon0=lon0, lat0=(south + north) / 2, lat1=lat1, lat2=lat2)


def densify(lat: np.ndarray, lon: np.ndarray, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Polygons (K, V) -> (K, V*n): n points per edge along the great circle (S2 edges are
    geodesics; straight lines between projected corners would be wrong for big cells)."""
    return densify_xyz(latlon_to_xyz(lat, lon), n)


def densify_xyz(a: np.ndarray, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """densify of polygons given as corner unit vectors (K, V, 3), as S2 gives them: no
    round trip through degrees."""
    b = np.roll(a, -1, axis=1)
    t = (np.arange(n) / n)[None, None, :, None]
    pts = (1 - t) * a[:, :, None, :] + t * b[
        :, :, None, :
    ]  # on the chord; normalizing = on the arc
    plat, plon = xyz_to_latlon(pts.reshape(len(a), -1, 3))
    # Keep each polygon continuous across ±180 (relative to its first vertex).
    plon = plon[:, :1] + wrap_lon(plon - plon[:, :1])
    return plat, plon


def project_lines(proj: Projection, lines: list[np.ndarray]) -> list[np.ndarray]:
    """Project lon/lat polylines, splitting them where they cross the map's seam."""
    out = []
    for p in lines:
        rel = wrap_lon(p[:, 0] - proj.lon0)
        cuts = np.flatnonzero(np.abs(np.diff(rel)) > 180.0) + 1
        for seg in np.split(np.arange(len(p)), cuts):
            if len(seg) > 1:
                x, y = proj(p[seg, 1], p[seg, 0])
                out.append(np.column_stack([x, y]))
    return out


@dataclass(frozen=True)
class CellGeometry:
    """Projected cell polygons and the map frame, shared by the PNG and HTML outputs."""

    proj: Projection
    xy: np.ndarray  # (K, V, 2) km
    frame: tuple[float, float, float, float]  # x0, x1, y0, y1 (km)
    basemap: list[tuple[str, np.ndarray]]  # (layer, projected polyline); "graticule" included
    attribution: str
    km_per_unit: float  # true km per projected km along the parallel through the map's centre
    ticks: list[tuple[float, float, str]]  # graticule labels: x, y (km) and e.g. "40°N"


def _nice_step(span: float, steps: Sequence[float], most: int = 8) -> float:
    return next((s for s in steps if span / s <= most), steps[-1])


def graticule(
    west: float, east: float, south: float, north: float
) -> tuple[list[np.ndarray], list[tuple[float, float, str]]]:
    """Meridians and parallels (lon/lat polylines) at a round step covering the extent, each
    with its label and the lon/lat where the label goes (south end of a meridian, west end of a
    parallel)."""
    step = _nice_step(max(east - west, north - south), _GRATICULE_STEPS)
    s, n = max(south - step, -90.0), min(north + step, 90.0)
    w, e = west - step, east + step
    lines, labels = [], []
    t = np.linspace(0.0, 1.0, 60)
    for lon in np.arange(np.ceil(w / step) * step, e + 1e-9, step):
        lines.append(np.column_stack([np.full_like(t, lon), s + (n - s) * t]))
        v = float(wrap_lon(lon))
        labels.append((south, lon, f"{abs(v):g}°{'E' if v > 0 else 'W' if v < 0 else ''}"))
    for lat in np.arange(np.ceil(s / step) * step, n + 1e-9, step):
        lines.append(np.column_stack([w + (e - w) * t, np.full_like(t, lat)]))
        labels.append((lat, west, f"{abs(lat):g}°{'N' if lat > 0 else 'S' if lat < 0 else ''}"))
    return lines, labels


def nice_length(km: float) -> float:
    """The largest 1, 2 or 5 x 10^n not above `km` (a scale bar's length)."""
    mag = 10.0 ** np.floor(np.log10(km))
    return float(max(m * mag for m in _NICE if m * mag <= km))


def _km_per_unit(proj: Projection, lat: float, lon: float) -> float:
    """Ground km per projected km along the parallel at (lat, lon): the map's local scale."""
    d = 0.05
    x, y = proj(np.array([lat, lat]), np.array([lon - d, lon + d]))
    return float(haversine_km(lat, lon - d, lat, lon + d) / np.hypot(np.diff(x), np.diff(y))[0])


def cell_geometry(
    cells: CellPartition,
    *,
    extra: tuple[float, float] | None = None,
    margin: float = 0.06,
    basemap_dir: str | Path | None = None,
) -> CellGeometry:
    """Project all cells (+ an extra point, e.g. the true location) and fit the frame to them.
    Build it once per map: the PNG and HTML of one photo share it (see `geometry=`)."""
    lat, lon = densify_xyz(cells.corners_xyz())
    alat = lat.ravel() if extra is None else np.r_[lat.ravel(), extra[0]]
    alon = lon.ravel() if extra is None else np.r_[lon.ravel(), extra[1]]
    proj = choose_projection(alat, alon)
    # Each polygon is continuous from its first vertex; move it whole so that vertex is on the map.
    first = lon[:, :1]
    x, y = proj(lat, lon - first + proj.lon0 + wrap_lon(first - proj.lon0), wrap=False)
    ex, ey = proj(alat, alon)
    pad = margin * max(np.ptp(ex), np.ptp(ey), 1.0)
    frame = (ex.min() - pad, ex.max() + pad, ey.min() - pad, ey.max() + pad)
    west, east = lon_extent(alon)
    box = (west - 5, float(np.min(alat)) - 5, east + 5, float(np.max(alat)) + 5)
    base: Basemap = load_basemap(box if east - west < 180 else None, basemap_dir)
    lines = [
        (layer, xy)
        for layer in LAYERS
        for xy in project_lines(proj, base.lines(layer, box if east <= 180 else None))
    ]
    south, north = float(np.min(alat)), float(np.max(alat))
    grid, grid_labels = graticule(west, east, south, north)
    lines += [("graticule", xy) for xy in project_lines(proj, grid)]
    ticks = []
    for la, lo, text in grid_labels:
        tx, ty = proj(np.array(la), np.array(lo))
        ticks.append((float(tx), float(ty), text))
    if proj.kind == "equal_earth":  # the outline of the world
        edge = np.linspace(-90, 90, 91)
        ring_lat = np.r_[edge, edge[::-1], edge[:1]]
        ring_lon = proj.lon0 + np.r_[np.full(91, -180.0), np.full(91, 180.0), -180.0]
        lines.append(("frame", np.column_stack(proj(ring_lat, ring_lon, wrap=False))))
    centre = ((south + north) / 2, float(wrap_lon((west + east) / 2)))
    return CellGeometry(
        proj,
        np.stack([x, y], axis=-1),
        frame,
        lines,
        base.attribution,
        _km_per_unit(proj, *centre),
        ticks,
    )


def great_circle(a: tuple[float, float], b: tuple[float, float], n: int = 64) -> np.ndarray:
    """(n, 2) lon/lat points along the great circle from a to b (lat, lon degrees)."""
    pa, pb = latlon_to_xyz(*a), latlon_to_xyz(*b)
    t = np.linspace(0.0, 1.0, n)[:, None]
    plat, plon = xyz_to_latlon((1 - t) * pa + t * pb)  # on the chord; normalizing = on the arc
    return np.column_stack([plon, plat])


def _draw(
    ax: Axes,
    geom: CellGeometry,
    values: np.ndarray,
    *,
    cmap: str,
    norm: Any,
    line_colour: str,
    no_data: str = "#9a9a9a",
) -> Any:
    """Fill every cell by value (NaN = no data), draw the boundary lines, frame the map."""
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection, PolyCollection

    cm = colormaps[cmap].with_extremes(bad=no_data)
    coll = PolyCollection(list(geom.xy), cmap=cm, norm=norm, edgecolors="none", zorder=1)
    coll.set_array(np.ma.masked_invalid(values))
    ax.add_collection(coll)
    for layer, width in BASEMAP_STYLE.items():
        segs = [xy for name, xy in geom.basemap if name == layer]
        style = "dashed" if layer == "graticule" else "solid"
        ax.add_collection(
            LineCollection(
                segs, colors=line_colour, linewidths=width, linestyles=style, alpha=0.8, zorder=2
            )
        )
    x0, x1, y0, y1 = geom.frame
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    _draw_ticks(ax, geom, "#555555")
    _draw_scale_bar(ax, geom, "#222222")
    return coll


def _draw_ticks(ax: Axes, geom: CellGeometry, colour: str) -> None:
    """Graticule labels that fall inside the frame."""
    x0, x1, y0, y1 = geom.frame
    for x, y, text in geom.ticks:
        if x0 <= x <= x1 and y0 <= y <= y1:
            ax.text(x, y, text, fontsize=6, color=colour, ha="left", va="bottom", zorder=2)


def scale_bar(geom: CellGeometry) -> tuple[float, float]:
    """(length in km, length in projected km) of a round scale bar about 1/5 of the frame."""
    x0, x1, _, _ = geom.frame
    km = nice_length((x1 - x0) / 5 * geom.km_per_unit)
    return km, km / geom.km_per_unit


def _draw_scale_bar(ax: Axes, geom: CellGeometry, colour: str) -> None:
    x0, x1, y0, y1 = geom.frame
    km, length = scale_bar(geom)
    bx, by = x1 - 0.04 * (x1 - x0) - length, y0 + 0.04 * (y1 - y0)
    ax.plot([bx, bx + length], [by, by], color=colour, lw=3, solid_capstyle="butt", zorder=7,
            gid="scalebar")  # fmt: skip
    ax.text(bx + length / 2, by, f"{km:g} km (at the centre)", color=colour, fontsize=7,
            ha="center", va="bottom", zorder=7)  # fmt: skip


def _figure(geom: CellGeometry, width: float = 9.0) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    x0, x1, y0, y1 = geom.frame
    aspect = (y1 - y0) / (x1 - x0)
    fig = Figure(figsize=(width + 1.6, min(max(width * aspect, 3.5), 12) + 1.0), dpi=110)
    fig.set_layout_engine("constrained")
    return fig, fig.add_subplot()


def _check_values(cells: CellPartition, values: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) != len(cells):
        raise GeovitError(f"{what} has {len(v)} values but the model has {len(cells)} cells")
    return v


def prob_norm(log: bool = True) -> Any:
    """The fixed colour scale of every probability map (see PROB_FLOOR)."""
    from matplotlib.colors import LogNorm, Normalize

    return LogNorm(PROB_FLOOR, 1.0, clip=True) if log else Normalize(0.0, 1.0, clip=True)


def prob_scale_label(log: bool = True) -> str:
    """What the colour bar says: the scale and its fixed range."""
    if log:
        return f"probability (log scale, fixed {PROB_FLOOR:g} to 1 for every image)"
    return "probability (linear scale, fixed 0 to 1 for every image)"


def cell_label(cells: CellPartition, i: int) -> str:
    """A cell's token and its most common training city, said as such (the city may lie far
    from the cell's centre)."""
    name = str(cells.names[i])
    return f"{cells.tokens[i]} (most photos near {name})" if name else str(cells.tokens[i])


@dataclass
class CellMap:
    """A drawn probability map and the numbers it shows."""

    figure: Figure
    probs: np.ndarray  # (K,) as coloured
    top: np.ndarray  # indices of the outlined, labelled cells, most probable first
    projection: Projection
    best: tuple[float, float]  # the best guess (lat, lon): the top cell's centroid
    error_km: float | None  # great-circle distance from the best guess to the truth, if given


def probability_map(
    cells: CellPartition,
    probs: np.ndarray,
    *,
    lat: float | None = None,
    lon: float | None = None,
    top_k: int = 5,
    log: bool = True,
    title: str | None = None,
    path: str | Path | None = None,
    basemap_dir: str | Path | None = None,
    geometry: CellGeometry | None = None,
) -> CellMap:
    """The model's softmax over all cells on a fixed colour scale (see prob_norm): top-k cells
    outlined and numbered (listed at the side), the best guess as a cross and, given the truth,
    a red dot joined to the best guess by the great circle, labelled with its length.
    `geometry`: cell_geometry(cells, extra=truth) already built (it is the costly part)."""
    from matplotlib.collections import PolyCollection

    p = _check_values(cells, probs, "the probability vector")
    truth = None if lat is None or lon is None else (float(lat), float(lon))
    geom = geometry or cell_geometry(cells, extra=truth, basemap_dir=basemap_dir)
    fig, ax = _figure(geom)
    ax.set_facecolor(_SEA)
    coll = _draw(ax, geom, p, cmap=PROB_CMAP, norm=prob_norm(log), line_colour="#9aa3ad")
    top = np.argsort(-p, kind="stable")[: max(top_k, 0)]
    ax.add_collection(
        PolyCollection(
            list(geom.xy[top]), facecolors="none", edgecolors="#36e2ff", linewidths=1.6, zorder=3
        )
    )
    cx, cy = geom.xy[top].mean(axis=1).T
    lines = []
    for rank, (i, x, y) in enumerate(zip(top, cx, cy, strict=True), start=1):
        ax.annotate(
            str(rank),
            (x, y),
            color="black",
            fontsize=9,
            ha="center",
            va="center",
            zorder=5,
            bbox={"boxstyle": "circle,pad=0.2", "fc": "#36e2ff", "ec": "none"},
        )
        lines.append(f"{rank}. {cell_label(cells, i)}  p={p[i]:.3f}")
    best, error_km = best_guess(cells, p, truth)
    bx, by = geom.proj(np.array(best[0]), np.array(best[1]))
    ax.plot(bx, by, "X", ms=10, mfc="#36e2ff", mec="black", zorder=6, label="best guess")
    if truth is not None:
        for seg in project_lines(geom.proj, [great_circle(best, truth)]):
            ax.plot(*seg.T, color="red", lw=1.5, ls="--", zorder=6)
        tx, ty = geom.proj(np.array(truth[0]), np.array(truth[1]))
        ax.plot(tx, ty, "o", ms=7, mfc="red", mec="white", mew=1.2, zorder=6,
                label=f"true location, {error_km:,.0f} km from the best guess")  # fmt: skip
    ax.legend(loc="lower left", fontsize=10, framealpha=0.8)
    ax.text(
        1.02,
        1.0,
        "top cells\n" + "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        fontsize=10,
        family="monospace",
    )
    fig.colorbar(coll, ax=ax, shrink=0.5, location="bottom", pad=0.02, label=prob_scale_label(log))
    # The title sits on the axes, not the figure: an equal-aspect map in a taller figure would
    # otherwise leave a band of white between a suptitle and the map.
    ax.set_title(title or f"Probability over {len(cells)} cells", pad=16)
    ax.text(0, 1.005, f"{geom.proj.label}; boundaries: Natural Earth", transform=ax.transAxes,
            fontsize=7, va="bottom")  # fmt: skip
    if path is not None:
        save_figure(fig, path)
    return CellMap(fig, p, top, geom.proj, best, error_km)


_SEA = "#c9d6e3"  # the map's background: black (improbable) cells stand out from it


def best_guess(
    cells: CellPartition, p: np.ndarray, truth: tuple[float, float] | None
) -> tuple[tuple[float, float], float | None]:
    """The best guess (the top cell's centroid, as Predictor reports it) and its error in km."""
    i = int(np.argmax(p))
    best = (float(cells.centroid_lat[i]), float(cells.centroid_lon[i]))
    if truth is None:
        return best, None
    return best, float(haversine_km(best[0], best[1], truth[0], truth[1]))


def cell_value_map(
    cells: CellPartition,
    values: np.ndarray,
    *,
    label: str,
    title: str,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    path: str | Path | None = None,
    basemap_dir: str | Path | None = None,
) -> Figure:
    """All cells coloured by a per-cell statistic (e.g. test accuracy); NaN cells are grey."""
    from matplotlib.colors import Normalize

    v = _check_values(cells, values, label)
    geom = cell_geometry(cells, basemap_dir=basemap_dir)
    fig, ax = _figure(geom)
    ax.set_facecolor("#f4f4f0")
    coll = _draw(ax, geom, v, cmap=cmap, norm=Normalize(vmin, vmax), line_colour="#303030")
    fig.colorbar(
        coll, ax=ax, shrink=0.5, location="bottom", pad=0.02, label=f"{label} (grey: no data)"
    )
    fig.suptitle(title)
    ax.set_title(f"{geom.proj.label}; boundaries: Natural Earth", loc="left", fontsize=7)
    if path is not None:
        save_figure(fig, path)
    return fig


def probability_map_html(
    cells: CellPartition,
    probs: np.ndarray,
    *,
    lat: float | None = None,
    lon: float | None = None,
    top_k: int = 5,
    log: bool = True,
    title: str | None = None,
    path: str | Path | None = None,
    basemap_dir: str | Path | None = None,
    geometry: CellGeometry | None = None,
) -> str:
    """A self-contained interactive map (inline SVG + JS, no network): wheel to zoom, drag to
    pan, hover or click a cell for its token, probability and place name. Returns the HTML and
    writes it to `path` when given; `geometry` as in probability_map."""
    from matplotlib import colormaps

    p = _check_values(cells, probs, "the probability vector")
    truth = None if lat is None or lon is None else (float(lat), float(lon))
    geom = geometry or cell_geometry(cells, extra=truth, basemap_dir=basemap_dir)
    norm = prob_norm(log)
    rgba = colormaps[PROB_CMAP](norm(p))
    colours = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in (rgba[:, :3] * 255).round().astype(int)]
    top = np.argsort(-p, kind="stable")[: max(top_k, 0)]
    xy = geom.xy * np.array([1.0, -1.0])  # SVG y grows downwards
    x0, x1, y0, y1 = geom.frame
    cells_svg = "".join(
        f'<path d="{_svg_path(poly)}" fill="{c}" data-i="{i}"/>'
        for i, (poly, c) in enumerate(zip(xy, colours, strict=True))
    )
    base_svg = "".join(
        f'<path class="{layer}" d="{_svg_path(line * [1.0, -1.0], closed=False)}"/>'
        for layer, line in geom.basemap
    )
    top_svg = "".join(f'<path d="{_svg_path(xy[i])}"/>' for i in top)
    best, error_km = best_guess(cells, p, truth)
    line_svg = (
        ""
        if truth is None
        else "".join(
            f'<path class="truthline" d="{_svg_path(seg * [1.0, -1.0], closed=False)}"/>'
            for seg in project_lines(geom.proj, [great_circle(best, truth)])
        )
    )
    bar_km, bar_len = scale_bar(geom)
    data = {
        "tokens": [str(t) for t in cells.tokens],
        "names": [str(n) for n in cells.names],
        "probs": [float(f"{v:.6g}") for v in p],
        "top": [int(i) for i in top],
        "centers": [[round(float(a), 1), round(float(b), 1)] for a, b in xy.mean(axis=1)],
        "truth": None if truth is None else [round(float(v), 1) for v in _svg_point(geom, truth)],
        "best": [round(float(v), 1) for v in _svg_point(geom, best)],
        "error_km": None if error_km is None else round(error_km, 1),
        "scalebar": [bar_km, round(bar_len, 1)],
        "ticks": [[round(x, 1), round(-y, 1), t] for x, y, t in geom.ticks],
        "viewBox": [x0, -y1, x1 - x0, y1 - y0],
        "gradient": [_hex(colormaps[PROB_CMAP](t)) for t in np.linspace(0, 1, 11)],
        "scale": [prob_scale_label(log), float(norm.vmin), float(norm.vmax)],
    }
    page = (
        resources.files("geovit")
        .joinpath("assets/map.html")
        .read_text()
        .replace("__TITLE__", html.escape(title or f"Probability over {len(cells)} cells"))
        .replace("__SUBTITLE__", html.escape(f"{geom.proj.label}. {geom.attribution}"))
        .replace("__CELLS__", cells_svg)
        .replace("__BASEMAP__", base_svg)
        .replace("__TOP__", top_svg)
        .replace("__TRUTHLINE__", line_svg)
        .replace("__DATA__", json.dumps(data).replace("</", "<\\/"))
    )
    if path is not None:
        write_text(path, page)
    return page


def _hex(rgba: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgba[:3])


def _svg_point(geom: CellGeometry, latlon: tuple[float, float]) -> tuple[float, float]:
    x, y = geom.proj(np.array(latlon[0]), np.array(latlon[1]))
    return float(x), -float(y)


def _svg_path(pts: np.ndarray, closed: bool = True) -> str:
    """Compact SVG path data (0.1 km resolution)."""
    q = np.round(pts, 1)
    body = " ".join(f"{x:g} {y:g}" for x, y in q)
    return f"M{body}{'Z' if closed else ''}"


def map_image(
    predictor: Predictor,
    image: Any,
    *,
    lat: float | None = None,
    lon: float | None = None,
    top_k: int = 5,
    log: bool = True,
    png: str | Path | None = None,
    html_path: str | Path | None = None,
    title: str | None = None,
    basemap_dir: str | Path | None = None,
) -> CellMap:
    """Predict one photo and draw its probability map (PNG and/or HTML) from predict_proba;
    both outputs share one cell geometry."""
    x = predictor.preprocess(image)
    probs = np.asarray(predictor.predict_proba(x[None]), dtype=np.float64)[0]
    truth = None if lat is None or lon is None else (float(lat), float(lon))
    kw: dict[str, Any] = {
        "lat": lat,
        "lon": lon,
        "top_k": top_k,
        "log": log,
        "title": title,
        "geometry": cell_geometry(predictor.cells, extra=truth, basemap_dir=basemap_dir),
    }
    if html_path is not None:
        probability_map_html(predictor.cells, probs, path=html_path, **kw)
    return probability_map(predictor.cells, probs, path=png, **kw)
