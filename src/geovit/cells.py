"""Adaptive S2 partition of the globe: the classes the model predicts (PlaNet style).

Start from the 6 cube faces, split every cell holding more than `t1` points into its 4 children
(down to `max_level`), then drop leaves holding fewer than `t2` points. Dense cities end up in
small cells, empty oceans in none, and classes stay roughly balanced.

The build never touches the points one level at a time: the leaf ids are sorted once, and the
points inside any cell are then one contiguous run of that array, found by binary search on the
cell's leaf-id range. Each level costs O(cells log N), so millions of points take seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from geovit import s2
from geovit.errors import GeovitError
from geovit.fileio import atomic_write

if TYPE_CHECKING:
    import pandas as pd
# pandas and pyarrow are imported where used: the CLI imports this module for its defaults, and
# `geovit --help` must not pay for them.
from geovit.geo import from_tangent, haversine_km, latlon_to_xyz, to_tangent, xyz_to_latlon

T1_DEFAULT = 100
T2_DEFAULT = 20
SCHEMA_VERSION = "1"
_VERSION_KEY = b"geovit.cells.schema_version"
_CLASS_COLUMNS = (
    "token",
    "level",
    "count",
    "centroid_lat",
    "centroid_lon",
    "center_lat",
    "center_lon",
    "name",
)
# Partition-wide settings travel as constant columns so that any table round trip (Parquet, a
# checkpoint's dict of lists) keeps them without side channels.
_META_COLUMNS = ("t1", "t2", "min_level", "max_level", "n_points", "n_dropped")


def _coordinates(lat: ArrayLike, lon: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat float64 lat/lon and a mask of the pairs that are finite and on the globe."""
    lat = np.asarray(lat, dtype=np.float64).ravel()
    lon = np.asarray(lon, dtype=np.float64).ravel()
    if lat.shape != lon.shape:
        raise GeovitError(
            f"got {lat.size} latitudes but {lon.size} longitudes; pass one of each per point"
        )
    with np.errstate(invalid="ignore"):
        ok = (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    return lat, lon, ok


def _split(
    sorted_ids: np.ndarray, t1: int, min_level: int, max_level: int
) -> tuple[np.ndarray, np.ndarray]:
    """Leaves (ids, counts) of the adaptive quadtree over sorted leaf ids, sorted by id."""
    faces = np.arange(7, dtype=np.uint64) << np.uint64(61)  # face f's leaves: [f << 61, f+1 << 61)
    counts = np.diff(np.searchsorted(sorted_ids, faces))
    cells = faces[:6] | np.uint64(1 << 60)
    leaf_ids, leaf_counts = [], []
    for level in range(max_level + 1):
        cells, counts = cells[counts > 0], counts[counts > 0]
        split = (level < min_level) | ((counts > t1) & (level < max_level))
        leaf_ids.append(cells[~split])
        leaf_counts.append(counts[~split])
        if not split.any():
            break
        children = s2.cell_children(cells[split])
        # A parent's 4 children tile its leaf range in order, so 5 boundaries give 4 counts.
        bounds = np.empty((len(children), 5), dtype=np.uint64)
        bounds[:, :4] = s2.cell_range_min(children)
        bounds[:, 4] = s2.cell_range_max(children[:, 3]) + np.uint64(1)
        cells = children.ravel()
        counts = np.diff(np.searchsorted(sorted_ids, bounds), axis=1).ravel()
    ids = np.concatenate(leaf_ids)
    order = np.argsort(ids)
    return ids[order], np.concatenate(leaf_counts)[order]


def _majority_names(labels: np.ndarray, names: ArrayLike, k: int) -> np.ndarray:
    """Most common non-empty name per class; ties go to the alphabetically first name."""
    import pandas as pd

    names = pd.Series(np.asarray(names, dtype=object).ravel()).replace("", None)
    codes, uniques = pd.factorize(names, sort=True)
    voters = (labels >= 0) & (codes >= 0)
    out = np.full(k, "", dtype=object)
    if voters.any():
        key = labels[voters] * len(uniques) + codes[voters]
        key, votes = np.unique(key, return_counts=True)
        cls, code = key // len(uniques), key % len(uniques)
        order = np.lexsort((code, -votes, cls))
        first = order[np.r_[True, cls[order][1:] != cls[order][:-1]]]
        out[cls[first]] = np.asarray(uniques, dtype=object)[code[first]]
    return out.astype(str)


@dataclass(frozen=True, eq=False)
class CellPartition:
    """Kept leaf cells of an adaptive partition; class k is the k-th smallest cell id.

    Immutable: the per-class arrays are read-only copies, so facts derived from them (tokens,
    corners) are computed once, on first use, and can never go stale.
    """

    cell_ids: np.ndarray  # uint64 (K,), ascending
    levels: np.ndarray  # int (K,)
    counts: np.ndarray  # int64 (K,), training points per class
    centroid_lat: np.ndarray  # spherical mean of the class's points: what we predict
    centroid_lon: np.ndarray
    center_lat: np.ndarray  # S2 cell center
    center_lon: np.ndarray
    names: np.ndarray  # str (K,), majority place name, "" if unknown
    t1: int
    t2: int
    n_points: int
    n_dropped: int
    min_level: int = 0
    max_level: int = s2.MAX_LEVEL

    @classmethod
    def build(
        cls,
        lat: ArrayLike,
        lon: ArrayLike,
        t1: int = T1_DEFAULT,
        t2: int = T2_DEFAULT,
        min_level: int = 0,
        max_level: int = s2.MAX_LEVEL,
        names: ArrayLike | None = None,
    ) -> CellPartition:
        """Partition the globe adaptively around the given training coordinates (degrees)."""
        if t1 < 1 or not 0 <= t2 <= t1:
            raise GeovitError(
                f"thresholds t1={t1}, t2={t2} are invalid; need t1 >= 1 and 0 <= t2 <= t1"
            )
        if not 0 <= min_level <= max_level <= s2.MAX_LEVEL:
            raise GeovitError(
                f"levels min={min_level}, max={max_level} are invalid; need 0 <= min <= max <= 30"
            )
        lat, lon, ok = _coordinates(lat, lon)
        if lat.size == 0:
            raise GeovitError("no coordinates to build cells from; pass at least one point")
        if not ok.all():
            bad = np.flatnonzero(~ok)
            raise GeovitError(
                f"{bad.size} of {lat.size} coordinates are NaN or off the globe (first: index "
                f"{bad[0]}, lat={lat[bad[0]]}, lon={lon[bad[0]]}); clean the data first"
            )
        if names is not None and np.size(names) != lat.size:
            raise GeovitError(
                f"got {np.size(names)} names for {lat.size} points; pass one per point"
            )
        xyz = latlon_to_xyz(lat, lon)
        leaf = s2.xyz_to_cell_id(xyz)
        ids, counts = _split(np.sort(leaf), t1, min_level, max_level)
        keep = counts >= t2
        if not keep.any():
            raise GeovitError(
                f"no cell holds t2={t2} of the {lat.size} points; lower --t2 or add data"
            )
        ids, counts = ids[keep], counts[keep]
        # Dropped points vote into an extra bin K that is cut off afterwards.
        labels = _label(ids, leaf)
        bins = np.where(labels >= 0, labels, len(ids))
        sums = np.stack([np.bincount(bins, xyz[:, c], len(ids) + 1)[:-1] for c in range(3)], -1)
        centroid_lat, centroid_lon = xyz_to_latlon(sums)
        center_lat, center_lon = s2.cell_center(ids)
        return cls(
            cell_ids=ids,
            levels=s2.cell_level(ids),
            counts=counts.astype(np.int64),
            centroid_lat=centroid_lat,
            centroid_lon=centroid_lon,
            center_lat=center_lat,
            center_lon=center_lon,
            names=np.full(len(ids), "")
            if names is None
            else _majority_names(labels, names, len(ids)),
            t1=int(t1),
            t2=int(t2),
            n_points=int(lat.size),
            n_dropped=int(lat.size - counts.sum()),
            min_level=int(min_level),
            max_level=int(max_level),
        )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                object.__setattr__(self, f.name, _read_only(value.copy()))

    def __len__(self) -> int:
        return len(self.cell_ids)

    @cached_property
    def tokens(self) -> np.ndarray:
        """S2 tokens of the classes, in class order (read-only, computed once)."""
        return _read_only(s2.cell_id_to_token(self.cell_ids))

    @cached_property
    def scale_km(self) -> np.ndarray:
        """Each cell's size, sqrt(area) in km (float64, read-only): the unit of the offset head's
        targets, so one regression scale fits cells from 1 km to 1,000 km across."""
        return _read_only(np.sqrt(s2.cell_area_km2(self.cell_ids)))

    @cached_property
    def _corners_xyz(self) -> np.ndarray:
        return _read_only(s2.cell_vertices_xyz(self.cell_ids))

    def corners_xyz(self, indices: ArrayLike | None = None) -> np.ndarray:
        """Corner unit vectors (n, 4, 3) of the given classes' cells (all by default),
        counter-clockwise. All corners are computed once and kept (a map of every cell needs
        them); given indices, only those cells' corners are computed (a top-k drawing)."""
        if indices is None:
            return self._corners_xyz
        return s2.cell_vertices_xyz(self.cell_ids[np.asarray(indices, dtype=np.int64)])

    def polygons(self, indices: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Corner lat (n, 4), lon (n, 4) of the given classes' cells (all by default),
        counter-clockwise (for maps)."""
        return xyz_to_latlon(self.corners_xyz(indices))

    def assign_leaf_ids(self, leaf_ids: ArrayLike) -> np.ndarray:
        """Class index (int64) of each S2 leaf id, -1 where no kept cell contains it."""
        return _label(self.cell_ids, np.asarray(leaf_ids, dtype=np.uint64))

    def assign(self, lat: ArrayLike, lon: ArrayLike) -> np.ndarray:
        """Class index (int64) of each point, -1 in pruned or empty areas and for NaN or
        off-globe coordinates (callers count the -1s and report them)."""
        lat, lon, ok = _coordinates(lat, lon)
        out = np.full(lat.size, -1, dtype=np.int64)
        out[ok] = self.assign_leaf_ids(s2.latlon_to_cell_id(lat[ok], lon[ok]))
        return out

    def offsets(self, labels: ArrayLike, lat: ArrayLike, lon: ArrayLike) -> np.ndarray:
        """(n, 2) offsets of points from their cell's centroid: (east, north) in the centroid's
        tangent plane (geo.to_tangent), in units of the cell's ``scale_km``. The offset head's
        regression target; rows with label -1 get NaN (no cell to be relative to)."""
        labels = np.asarray(labels, dtype=np.int64)
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        out = np.full((labels.size, 2), np.nan)
        ok = labels >= 0
        k = labels[ok]
        east, north = to_tangent(self.centroid_lat[k], self.centroid_lon[k], lat[ok], lon[ok])
        out[ok] = np.stack([east, north], axis=-1) / self.scale_km[k, None]
        return out

    def points_at(self, labels: ArrayLike, offsets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Degrees (lat, lon) of offsets (..., 2) from cells ``labels`` (...): the inverse of
        :meth:`offsets`, how the hybrid head's prediction becomes a point."""
        k = np.asarray(labels, dtype=np.int64)
        off = np.asarray(offsets, dtype=np.float64) * self.scale_km[k][..., None]
        return from_tangent(self.centroid_lat[k], self.centroid_lon[k], off[..., 0], off[..., 1])

    def parents_in(self, coarse: CellPartition) -> np.ndarray:
        """For each class, the class of ``coarse`` that contains its S2 cell center, or, for a
        cell the coarse partition pruned, the coarse class with the nearest centroid: every
        fine cell gets one parent, so a hierarchy's product of probabilities covers them all."""
        parent = coarse.assign(self.center_lat, self.center_lon)
        for i in np.nonzero(parent < 0)[0]:  # rare: only cells the coarse partition pruned
            d = haversine_km(
                self.center_lat[i], self.center_lon[i], coarse.centroid_lat, coarse.centroid_lon
            )
            parent[i] = int(np.argmin(d))
        return parent

    def to_frame(self) -> pd.DataFrame:
        """One row per class (class order), plus the partition's settings as constant columns."""
        import pandas as pd

        df = pd.DataFrame(
            {
                "token": self.tokens,
                "level": self.levels.astype(np.int64),
                "count": self.counts,
                "centroid_lat": self.centroid_lat,
                "centroid_lon": self.centroid_lon,
                "center_lat": self.center_lat,
                "center_lon": self.center_lon,
                "name": self.names.astype(object),
            }
        )
        for col in _META_COLUMNS:
            df[col] = np.int64(getattr(self, col))
        return df

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> CellPartition:
        """Inverse of to_frame (also accepts the frame rebuilt from a checkpoint's lists)."""
        missing = [c for c in (*_CLASS_COLUMNS, *_META_COLUMNS) if c not in df.columns]
        if missing or len(df) == 0:
            raise GeovitError(
                f"cell table is missing columns {missing} or has no rows; rebuild it with "
                "`geovit cells build`"
            )
        ids = s2.token_to_cell_id(df["token"].to_numpy(dtype=str))
        if np.any(s2.cell_range_min(ids[1:]) <= s2.cell_range_max(ids[:-1])):
            raise GeovitError(
                "cell table's cells are not sorted and disjoint; rebuild it with "
                "`geovit cells build`"
            )
        meta = {}
        for col in _META_COLUMNS:
            values = df[col].to_numpy()
            if np.any(values != values[0]):
                raise GeovitError(f"cell table's {col!r} column is not constant; rebuild it")
            meta[col] = int(values[0])
        return cls(
            cell_ids=ids,
            levels=s2.cell_level(ids),
            counts=df["count"].to_numpy(dtype=np.int64),
            centroid_lat=df["centroid_lat"].to_numpy(dtype=np.float64),
            centroid_lon=df["centroid_lon"].to_numpy(dtype=np.float64),
            center_lat=df["center_lat"].to_numpy(dtype=np.float64),
            center_lon=df["center_lon"].to_numpy(dtype=np.float64),
            names=df["name"].fillna("").to_numpy(dtype=str),
            **meta,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one Parquet file atomically, stamped with the schema version."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(self.to_frame(), preserve_index=False)
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), _VERSION_KEY: SCHEMA_VERSION.encode()}
        )
        return atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CellPartition:
        """Read a file written by save(); a missing, foreign or garbled file is a GeovitError."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.is_file():
            raise GeovitError(
                f"cells file {path} does not exist; build it with `geovit cells build`"
            )
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise GeovitError(
                f"cells file {path} is not a readable Parquet file ({exc}); rebuild it with "
                "`geovit cells build`"
            ) from exc
        version = (table.schema.metadata or {}).get(_VERSION_KEY)
        if version != SCHEMA_VERSION.encode():
            found = (
                "no version" if version is None else f"version {version.decode(errors='replace')}"
            )
            raise GeovitError(
                f"cells file {path} has {found}, this geovit reads version {SCHEMA_VERSION}; "
                "rebuild it with `geovit cells build`"
            )
        return cls.from_frame(table.to_pandas())

    def summary(self) -> dict:
        """Headline numbers for people: class count, kept/dropped points, levels, cell sizes."""
        area = s2.cell_area_km2(self.cell_ids)
        levels, per_level = np.unique(self.levels, return_counts=True)
        return {
            "classes": len(self),
            "points": self.n_points,
            "points_kept": int(self.counts.sum()),
            "points_dropped": self.n_dropped,
            "t1": self.t1,
            "t2": self.t2,
            "min_level": self.min_level,
            "max_level": self.max_level,
            "levels": {int(lv): int(c) for lv, c in zip(levels, per_level, strict=True)},
            "smallest_km2": float(area.min()),
            "largest_km2": float(area.max()),
        }


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _label(cell_ids: np.ndarray, leaf_ids: np.ndarray) -> np.ndarray:
    """Index of the sorted, disjoint cell containing each leaf id, or -1."""
    idx = np.searchsorted(s2.cell_range_min(cell_ids), leaf_ids, side="right") - 1
    # idx == -1 (before the first cell) reads the last cell's bound, then is masked out
    inside = (leaf_ids <= s2.cell_range_max(cell_ids)[idx]) & (idx >= 0)
    return np.where(inside, idx, -1).astype(np.int64, copy=False)
