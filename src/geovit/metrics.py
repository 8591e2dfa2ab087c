"""Streaming evaluation metrics: one scored batch, fed to every accumulator of one collection.

Every accumulator follows one protocol (:class:`Accumulator`): ``update(batch)`` with a
:class:`ScoredBatch` built once per batch, ``compute()`` -> a JSON-ready dict, ``rows()`` -> the
headline numbers, ``tables()`` -> the readable tables, and a sum/concatenate state
(``state()`` / ``merge_state()``) so the states of several processes (DDP) merge into the one
result a single process would get. Validation during training, ``geovit evaluate``, the report
and the model card all use :class:`GeoMetrics`, so a metric is written once.

Evaluation on OpenStreetView-5M means 1M+ images x thousands of cells, so nothing here keeps
logits: per-batch work reduces them to counts and sums, and only a few numbers per image
(distance in float64, entropy and local mass in float32) are kept for exact medians.
Conventions follow the OpenStreetView-5M benchmark code: haversine distance with R = 6371 km,
"within X km" is the strict ``d < X``, GeoGuessr score ``5000 * exp(-d / 1492.7)``, and place
labels built from ``reverse_geocoder`` as ``cc``, ``admin1_cc``, ``admin2_admin1_cc``,
``name_admin2_admin1_cc``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from geovit.geo import EARTH_RADIUS_KM, geoscore, haversine_km

TOP_KS: tuple[int, ...] = (1, 3, 5)
HEADLINE_KM = 200.0  # the "within X km" figure quoted next to top-1 (OSV-5M's region scale)
DISTANCE_THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, HEADLINE_KM, 750.0, 2500.0)
PLACE_LEVELS: tuple[str, ...] = ("country", "region", "sub-region", "city")
DISTANCE_CONVENTION = (
    f"great-circle distance by the haversine formula with Earth radius {EARTH_RADIUS_KM:g} km; "
    "'within X km' counts d < X (strict), as in the OpenStreetView-5M benchmark code"
)
ECE_BINS = 15
CONCENTRATION_RADIUS_KM = 200.0


# ----------------------------------------------------------------------------- array helpers


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64 (CE of confident wrong
    predictions would overflow to inf through log(softmax) in float32)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def true_class_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of each row's true class; ties count against it (constant scores are not
    "top-1 correct"). Rows with label -1 get rank K (never a hit). O(B*K), no sort: the hit
    for every k comes from one comparison."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    inside = labels >= 0
    rank = np.full(labels.shape, scores.shape[-1], dtype=np.int64)
    rows = np.nonzero(inside)[0]
    true_score = scores[rows, labels[rows]][:, None]
    rank[rows] = (scores[rows] >= true_score).sum(axis=1) - 1
    return rank


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row, best first (argpartition, then sort only k)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[-1])
    part = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def neighbours_within(
    lat: np.ndarray, lon: np.ndarray, radius_km: float, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse (CSR) neighbour lists: cells j with haversine(i, j) < radius_km, i included.

    A K x K distance matrix would be 400 MB for K = 10k; cells are local, so the lists are short.
    Returns (indptr (K+1,), indices) with row i's neighbours at indices[indptr[i]:indptr[i+1]].
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    rows: list[np.ndarray] = []
    counts = np.zeros(len(lat), dtype=np.int64)
    for start in range(0, len(lat), chunk):
        d = haversine_km(
            lat[start : start + chunk, None], lon[start : start + chunk, None], lat, lon
        )
        near = d < radius_km
        counts[start : start + chunk] = near.sum(axis=1)
        rows.append(np.nonzero(near)[1])
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return indptr, indices.astype(np.int64)


def _summary(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"mean": None, "median": None}
    v = values.astype(np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v))}


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _copy(value: Any) -> Any:
    return value.copy() if isinstance(value, np.ndarray) else value


# ----------------------------------------------------------------------------- the scored batch


def top_cell_points(
    scores: np.ndarray, centroid_lat: np.ndarray, centroid_lon: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The default point estimate: each row's top cell's centroid (lat, lon)."""
    top = np.asarray(scores).argmax(axis=1)
    return np.asarray(centroid_lat)[top], np.asarray(centroid_lon)[top]


@dataclass(frozen=True)
class ScoredBatch:
    """One batch as every accumulator sees it, built once per batch.

    The predicted coordinates are an input, not derived here: the point estimator (top cell's
    centroid by default, :func:`top_cell_points`) is the caller's choice. Derived arrays (top
    cell, confidence, distances, ranks) are computed on first use and shared by all accumulators.
    """

    log_probs: np.ndarray  # (B, K) float64 log-softmax of temperature-scaled logits
    labels: np.ndarray  # (B,) int64 true class, -1 = outside every kept cell
    true_lat: np.ndarray  # (B,) float64
    true_lon: np.ndarray
    pred_lat: np.ndarray  # (B,) float64: the point estimate of each image
    pred_lon: np.ndarray
    true_places: Mapping[str, Sequence[Any]] | None = None  # level -> ``unique_*`` labels

    @classmethod
    def from_logits(
        cls,
        logits: np.ndarray,
        labels: np.ndarray,
        true_lat: np.ndarray,
        true_lon: np.ndarray,
        pred_lat: np.ndarray,
        pred_lon: np.ndarray,
        true_places: Mapping[str, Sequence[Any]] | None = None,
    ) -> ScoredBatch:
        """A scored batch from (B, K) logits (temperature already applied)."""
        f64 = np.float64
        return cls(
            log_softmax(logits),
            np.asarray(labels, dtype=np.int64),
            np.asarray(true_lat, dtype=f64),
            np.asarray(true_lon, dtype=f64),
            np.asarray(pred_lat, dtype=f64),
            np.asarray(pred_lon, dtype=f64),
            true_places,
        )

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def top(self) -> np.ndarray:
        """(B,) the top cell of each image."""
        return self.log_probs.argmax(axis=1)

    @cached_property
    def confidence(self) -> np.ndarray:
        """(B,) the top cell's probability."""
        return np.exp(self.log_probs[np.arange(len(self)), self.top])

    @cached_property
    def rank(self) -> np.ndarray:
        """(B,) 0-based rank of the true cell (see :func:`true_class_rank`)."""
        return true_class_rank(self.log_probs, self.labels)

    @cached_property
    def distance_km(self) -> np.ndarray:
        """(B,) float64 great-circle error of the predicted point."""
        d = haversine_km(self.true_lat, self.true_lon, self.pred_lat, self.pred_lon)
        return np.asarray(d, dtype=np.float64)


# ----------------------------------------------------------------------------- the protocol

Row = tuple[str, str, float]  # (metric type, readable name, value): the card's model-index
Table = tuple[str, list[str], list[list[str]]]  # (title, header, rows): metrics.md, CLI, report


def pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def num(v: float | None, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


class Accumulator:
    """The metric protocol: ``update(batch)``, ``compute()``, ``rows()``, ``tables()``, and a
    state that merges across processes.

    A subclass names its state: ``sum_state`` attributes (counts and sums: numbers or arrays)
    add up, ``cat_state`` attributes (lists of per-image arrays, for exact medians)
    concatenate. ``rows_of``/``tables_of`` read the accumulator's own keys back out of a metrics
    dict (one just computed or one read from metrics.json), so no consumer indexes it by hand.
    """

    key = ""  # the top-level key its compute() writes (rows_of/tables_of need it in the dict)
    sum_state: tuple[str, ...] = ()
    cat_state: tuple[str, ...] = ()

    def reset(self) -> None:
        """Empty the state."""
        raise NotImplementedError

    def update(self, batch: ScoredBatch) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def rows_of(m: Mapping[str, Any]) -> list[Row]:
        """Headline numbers of this accumulator in metrics dict ``m``."""
        return []

    @staticmethod
    def tables_of(m: Mapping[str, Any]) -> list[Table]:
        """Readable tables of this accumulator in metrics dict ``m``."""
        return []

    def rows(self) -> list[Row]:
        return self.rows_of(self.compute())

    def tables(self) -> list[Table]:
        return self.tables_of(self.compute())

    def state(self) -> dict[str, Any]:
        """The mergeable state: sums as they are, each per-image list as one array."""
        out = {name: _copy(getattr(self, name)) for name in self.sum_state}
        for name in self.cat_state:
            chunks = getattr(self, name)
            out[name] = np.concatenate(chunks) if chunks else np.zeros(0)
        return out

    def merge_state(self, state: Mapping[str, Any]) -> None:
        """Add another accumulator's ``state()`` (e.g. another process's) to this one."""
        for name in self.sum_state:
            setattr(self, name, getattr(self, name) + state[name])
        for name in self.cat_state:
            if len(state[name]):
                getattr(self, name).append(np.asarray(state[name]))

    def merge(self, other: Accumulator) -> None:
        self.merge_state(other.state())


# ----------------------------------------------------------------------------- accumulators


class CellAccuracy(Accumulator):
    """Top-k cell accuracy in two views, plus cross-entropy and counts.

    ``all_images``: every image; those whose true location lies outside every kept cell
    (label -1) count as wrong. ``in_cell_images``: only images with a class (the design's view,
    which silently dropped the others). Cross-entropy needs a class, so it is over in-cell images.
    """

    key = "cell_accuracy"
    sum_state = ("n_images", "n_outside", "hits", "nll_sum")

    def __init__(self, ks: Sequence[int] = TOP_KS) -> None:
        self.ks = tuple(sorted({int(k) for k in ks}))
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"top-k values must be positive integers, got {ks}")
        self.reset()

    def reset(self) -> None:
        self.n_images = 0
        self.n_outside = 0
        self.hits = np.zeros(len(self.ks), dtype=np.int64)
        self.nll_sum = 0.0

    def update(self, batch: ScoredBatch) -> None:
        self.add(batch.log_probs, batch.labels, batch.rank)

    def add(
        self, log_probs: np.ndarray, labels: np.ndarray, rank: np.ndarray | None = None
    ) -> None:
        """log_probs: (B,K) log-softmax of temperature-scaled logits; labels: (B,), -1 = none;
        rank: the true class's rank when the caller has it already."""
        labels = np.asarray(labels, dtype=np.int64)
        rank = true_class_rank(log_probs, labels) if rank is None else rank
        inside = labels >= 0
        self.n_images += len(labels)
        self.n_outside += int((~inside).sum())
        self.hits += (rank[:, None] < np.asarray(self.ks)[None, :]).sum(axis=0)
        rows = np.nonzero(inside)[0]
        self.nll_sum -= float(np.asarray(log_probs, dtype=np.float64)[rows, labels[rows]].sum())

    def compute(self) -> dict[str, Any]:
        n_in = self.n_images - self.n_outside
        return {
            "n_images": self.n_images,
            "n_outside_cells": self.n_outside,
            "n_in_cell": n_in,
            "cell_accuracy": {
                "all_images": {
                    f"top{k}": _ratio(h, self.n_images)
                    for k, h in zip(self.ks, self.hits, strict=True)
                },
                "in_cell_images": {
                    f"top{k}": _ratio(h, n_in) for k, h in zip(self.ks, self.hits, strict=True)
                },
            },
            "cross_entropy": _ratio(self.nll_sum, n_in),
        }

    @staticmethod
    def rows_of(m: Mapping[str, Any]) -> list[Row]:
        cell = m["cell_accuracy"]
        return [
            ("accuracy", f"Cell accuracy {k} ({view_name})", v)
            for view, view_name in (
                ("all_images", "all test images"),
                ("in_cell_images", "images inside kept cells"),
            )
            for k, v in cell[view].items()
        ]

    @staticmethod
    def tables_of(m: Mapping[str, Any]) -> list[Table]:
        cell = m["cell_accuracy"]
        ks = list(cell["all_images"])
        return [
            (
                "Cell accuracy",
                ["", *[k.replace("top", "top-") for k in ks]],
                [
                    [
                        "all scored images (outside-cell images count as wrong)",
                        *[pct(cell["all_images"][k]) for k in ks],
                    ],
                    [
                        "in-cell images only (the design's view)",
                        *[pct(cell["in_cell_images"][k]) for k in ks],
                    ],
                ],
            )
        ]


def top_accuracy(m: Mapping[str, Any], k: int = 1, view: str = "all_images") -> float | None:
    """Top-k cell accuracy of a metrics dict (``view``: all_images or in_cell_images)."""
    return m["cell_accuracy"][view].get(f"top{k}")


class DistanceError(Accumulator):
    """Great-circle error of the predicted point, with exact mean/median and strict-< accuracies.

    Sums, threshold counts and the per-image distances kept for the median are all float64
    (8 bytes per image: float32 would move the exact median by ~1e-5 km).
    """

    key = "distance"
    sum_state = ("within", "n", "dist_sum", "score_sum")
    cat_state = ("_chunks",)

    def __init__(self, thresholds_km: Sequence[float] = DISTANCE_THRESHOLDS_KM) -> None:
        self.thresholds = np.asarray(sorted(thresholds_km), dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self.within = np.zeros(len(self.thresholds), dtype=np.int64)
        self.n = 0
        self.dist_sum = 0.0
        self.score_sum = 0.0
        self._chunks: list[np.ndarray] = []

    def update(self, batch: ScoredBatch) -> None:
        self.add_distances(batch.distance_km)

    def add(
        self, true_lat: np.ndarray, true_lon: np.ndarray, pred_lat: np.ndarray, pred_lon: np.ndarray
    ) -> np.ndarray:
        """Add one batch of points; returns its distances in km (float64)."""
        d = np.asarray(haversine_km(true_lat, true_lon, pred_lat, pred_lon), dtype=np.float64)
        self.add_distances(d)
        return d

    def add_distances(self, d: np.ndarray) -> None:
        """Add one batch of errors in km."""
        d = np.asarray(d, dtype=np.float64)
        self.n += d.size
        self.dist_sum += float(d.sum())
        self.score_sum += float(np.asarray(geoscore(d), dtype=np.float64).sum())
        self.within += (d[:, None] < self.thresholds[None, :]).sum(axis=0)
        self._chunks.append(d)

    @property
    def distances(self) -> np.ndarray:
        """Per-image errors in km (float64), in update order."""
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0)

    def compute(self) -> dict[str, Any]:
        d = self.distances
        return {
            "distance": {
                "convention": DISTANCE_CONVENTION,
                "n": self.n,
                "mean_km": _ratio(self.dist_sum, self.n),
                "median_km": float(np.median(d)) if self.n else None,
                "accuracy_within_km": {
                    f"{t:g}": _ratio(c, self.n)
                    for t, c in zip(self.thresholds, self.within, strict=True)
                },
            },
            "geoscore_mean": _ratio(self.score_sum, self.n),
        }

    @staticmethod
    def rows_of(m: Mapping[str, Any]) -> list[Row]:
        dist = m["distance"]
        return [
            ("median_distance_km", "Median great-circle error (km)", dist["median_km"]),
            ("mean_distance_km", "Mean great-circle error (km)", dist["mean_km"]),
            *[("accuracy", f"Within {t} km", v) for t, v in dist["accuracy_within_km"].items()],
            ("geoscore", "Mean GeoGuessr score", m["geoscore_mean"]),
        ]

    @staticmethod
    def tables_of(m: Mapping[str, Any]) -> list[Table]:
        dist = m["distance"]
        return [
            (
                # the estimator's phrase, recorded by the evaluation (geovit.points.describe)
                "Distance error (predicted point = "
                f"{m.get('point_description', 'the top cell centroid')})",
                [
                    "mean km",
                    "median km",
                    *[f"< {t} km" for t in dist["accuracy_within_km"]],
                    "GeoGuessr score",
                ],
                [
                    [
                        num(dist["mean_km"], ".1f"),
                        num(dist["median_km"], ".1f"),
                        *[pct(v) for v in dist["accuracy_within_km"].values()],
                        num(m["geoscore_mean"], ".0f"),
                    ]
                ],
            )
        ]


def median_km(m: Mapping[str, Any]) -> float | None:
    """Median great-circle error of a metrics dict."""
    return m["distance"]["median_km"]


def within_km(m: Mapping[str, Any], km: float = HEADLINE_KM) -> float | None:
    """Share of images with error < ``km`` in a metrics dict (None if not measured)."""
    return m["distance"]["accuracy_within_km"].get(f"{km:g}")


def distance_convention(m: Mapping[str, Any]) -> str:
    return m["distance"]["convention"]


def reverse_geocode(lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
    """Offline place labels of points, in the OpenStreetView-5M ``unique_*`` format.

    Uses ``reverse_geocoder`` (GeoNames cities > 1000 people, nearest city) in single-process
    mode so results do not depend on a worker pool.
    """
    import reverse_geocoder

    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    if lat.size == 0:
        return {level: np.zeros(0, dtype=object) for level in PLACE_LEVELS}
    found = reverse_geocoder.search(
        list(zip(lat.tolist(), lon.tolist(), strict=True)), mode=1, verbose=False
    )
    cc = [r.get("cc", "") for r in found]
    a1 = [r.get("admin1", "") for r in found]
    a2 = [r.get("admin2", "") for r in found]
    name = [r.get("name", "") for r in found]
    return {
        "country": np.array(cc, dtype=object),
        "region": np.array([f"{r}_{c}" for r, c in zip(a1, cc, strict=True)], dtype=object),
        "sub-region": np.array(
            [f"{s}_{r}_{c}" for s, r, c in zip(a2, a1, cc, strict=True)], dtype=object
        ),
        "city": np.array(
            [f"{n}_{s}_{r}_{c}" for n, s, r, c in zip(name, a2, a1, cc, strict=True)], dtype=object
        ),
    }


def label_mask(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """True where a place label is present: a string other than "", "nan"/"NaN" (pandas'
    missing values as text, OSV-5M's fillna("NaN")) or "None"."""
    missing = ("", "nan", "none")
    return np.array(
        [isinstance(v, str) and v.strip().lower() not in missing for v in values], dtype=bool
    )


class PlaceAccuracy(Accumulator):
    """Country / region / sub-region / city accuracy of the reverse-geocoded predicted point.

    Top-cell predictions are cell centroids, so the geocoder cache holds at most K entries. Rows
    whose true label is missing are masked out of that level (and counted in ``n_labelled``).
    """

    key = "place_accuracy"
    sum_state = ("correct", "labelled")

    def __init__(self, levels: Sequence[str] = PLACE_LEVELS) -> None:
        unknown = set(levels) - set(PLACE_LEVELS)
        if unknown:
            raise ValueError(f"unknown place levels {sorted(unknown)}; use {PLACE_LEVELS}")
        self.levels = tuple(levels)
        self._cache: dict[tuple[float, float], tuple[str, ...]] = {}
        self.reset()

    def reset(self) -> None:
        self.correct = np.zeros(len(self.levels), dtype=np.int64)
        self.labelled = np.zeros(len(self.levels), dtype=np.int64)

    def predicted_places(self, lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
        """Place labels of predicted points, geocoding only points not seen before."""
        keys = list(
            zip(
                np.asarray(lat, dtype=np.float64).tolist(),
                np.asarray(lon, dtype=np.float64).tolist(),
                strict=True,
            )
        )
        missing = sorted({k for k in keys if k not in self._cache})
        if missing:
            mlat, mlon = np.array(missing).T
            new = reverse_geocode(mlat, mlon)
            for i, key in enumerate(missing):
                self._cache[key] = tuple(new[level][i] for level in PLACE_LEVELS)
        rows = [self._cache[k] for k in keys]
        return {
            level: np.array([r[j] for r in rows], dtype=object)
            for j, level in enumerate(PLACE_LEVELS)
            if level in self.levels
        }

    def update(self, batch: ScoredBatch) -> None:
        """Without ``batch.true_places`` the true coordinates are geocoded too."""
        truth = batch.true_places
        if truth is None:
            truth = reverse_geocode(batch.true_lat, batch.true_lon)
        self.add(batch.pred_lat, batch.pred_lon, truth)

    def add(
        self, pred_lat: np.ndarray, pred_lon: np.ndarray, true_places: Mapping[str, Sequence[Any]]
    ) -> None:
        """true_places: level -> (B,) labels (``unique_<level>`` column values); levels absent
        from the mapping are skipped for this batch."""
        pred = self.predicted_places(pred_lat, pred_lon)
        for i, level in enumerate(self.levels):
            if level not in true_places:
                continue
            truth = np.asarray(true_places[level], dtype=object)
            mask = label_mask(truth)
            self.labelled[i] += int(mask.sum())
            self.correct[i] += int((pred[level][mask] == truth[mask]).sum())

    def compute(self) -> dict[str, Any]:
        return {
            "place_accuracy": {
                level: {
                    "accuracy": _ratio(self.correct[i], self.labelled[i]),
                    "n_labelled": int(self.labelled[i]),
                }
                for i, level in enumerate(self.levels)
            }
        }

    @staticmethod
    def tables_of(m: Mapping[str, Any]) -> list[Table]:
        return [
            (
                "Place accuracy (reverse_geocoder on the predicted point)",
                ["level", "accuracy", "labelled images"],
                [
                    [lvl, pct(v["accuracy"]), str(v["n_labelled"])]
                    for lvl, v in m["place_accuracy"].items()
                ],
            )
        ]


class Calibration(Accumulator):
    """Expected calibration error of the top-1 confidence with equal-width bins.

    ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|, bins (b/M, (b+1)/M] as in Guo et al. (2017).
    Its rows and table also show the cross-entropy (and the temperature when the dict has one):
    loss and calibration are read together.
    """

    key = "calibration"
    sum_state = ("count", "conf_sum", "correct")

    def __init__(self, n_bins: int = ECE_BINS) -> None:
        self.n_bins = int(n_bins)
        self.edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        self.reset()

    def reset(self) -> None:
        self.count = np.zeros(self.n_bins, dtype=np.int64)
        self.conf_sum = np.zeros(self.n_bins, dtype=np.float64)
        self.correct = np.zeros(self.n_bins, dtype=np.int64)

    def update(self, batch: ScoredBatch) -> None:
        self.add(batch.confidence, batch.top == batch.labels)

    def add(self, confidence: np.ndarray, correct: np.ndarray) -> None:
        conf = np.asarray(confidence, dtype=np.float64)
        b = np.clip(np.searchsorted(self.edges, conf, side="left") - 1, 0, self.n_bins - 1)
        self.count += np.bincount(b, minlength=self.n_bins)
        self.conf_sum += np.bincount(b, weights=conf, minlength=self.n_bins)
        self.correct += np.bincount(
            b, weights=np.asarray(correct, dtype=np.float64), minlength=self.n_bins
        ).astype(np.int64)

    def compute(self) -> dict[str, Any]:
        n = int(self.count.sum())
        nonempty = self.count > 0
        acc = np.divide(self.correct, self.count, out=np.zeros(self.n_bins), where=nonempty)
        conf = np.divide(self.conf_sum, self.count, out=np.zeros(self.n_bins), where=nonempty)
        ece = float((self.count / n * np.abs(acc - conf)).sum()) if n else None
        edges = self.edges
        bins = [
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": int(self.count[i]),
                "confidence": float(conf[i]) if nonempty[i] else None,
                "accuracy": float(acc[i]) if nonempty[i] else None,
            }
            for i in range(self.n_bins)
        ]
        return {"calibration": {"ece": ece, "n_bins": self.n_bins, "n": n, "bins": bins}}

    @staticmethod
    def rows_of(m: Mapping[str, Any]) -> list[Row]:
        cal = m["calibration"]
        return [
            ("cross_entropy", "Cross-entropy (in-cell images)", m.get("cross_entropy")),
            ("ece", f"Expected calibration error ({cal['n_bins']} bins)", cal["ece"]),
        ]

    @staticmethod
    def tables_of(m: Mapping[str, Any]) -> list[Table]:
        cal = m["calibration"]
        return [
            (
                "Loss and calibration",
                [
                    "cross-entropy (in-cell images)",
                    f"ECE ({cal['n_bins']} bins, top-1 confidence)",
                    "temperature",
                ],
                [
                    [
                        num(m.get("cross_entropy"), ".4f"),
                        num(cal["ece"], ".4f"),
                        num(m.get("temperature"), ".4f"),
                    ]
                ],
            )
        ]


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE of a whole array at once (same binning as :class:`Calibration`)."""
    cal = Calibration(n_bins)
    cal.add(confidence, correct)
    return cal.compute()["calibration"]["ece"]


class Concentration(Accumulator):
    """How concentrated each predicted distribution is: entropy (nats) and the probability mass
    on cells whose centroid lies within ``radius_km`` of the top cell's centroid (top included).
    """

    key = "concentration"
    cat_state = ("_entropy", "_mass")

    def __init__(
        self,
        centroid_lat: np.ndarray,
        centroid_lon: np.ndarray,
        radius_km: float = CONCENTRATION_RADIUS_KM,
    ) -> None:
        self.radius_km = float(radius_km)
        self.indptr, self.indices = neighbours_within(centroid_lat, centroid_lon, radius_km)
        self.reset()

    def reset(self) -> None:
        self._entropy: list[np.ndarray] = []
        self._mass: list[np.ndarray] = []

    def update(self, batch: ScoredBatch) -> None:
        self.add(batch.log_probs)

    def add(self, log_probs: np.ndarray) -> None:
        logp = np.asarray(log_probs, dtype=np.float64)
        p = np.exp(logp)
        self._entropy.append((-(p * logp).sum(axis=1)).astype(np.float32))
        top = logp.argmax(axis=1)
        start, stop = self.indptr[top], self.indptr[top + 1]
        lengths = stop - start
        rows = np.repeat(np.arange(len(top)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = self.indices[np.repeat(start, lengths) + offsets]
        mass = np.bincount(rows, weights=p[rows, cols], minlength=len(top))
        self._mass.append(mass.astype(np.float32))

    def compute(self) -> dict[str, Any]:
        return {
            "concentration": {
                "entropy_nats": _summary(_concat(self._entropy)),
                f"mass_within_{self.radius_km:g}km": _summary(_concat(self._mass)),
            }
        }

    @staticmethod
    def tables_of(m: Mapping[str, Any]) -> list[Table]:
        return [
            (
                "Concentration of each prediction",
                ["", "mean", "median"],
                [
                    [name.replace("_", " "), num(v["mean"], ".3f"), num(v["median"], ".3f")]
                    for name, v in m["concentration"].items()
                ],
            )
        ]


# ----------------------------------------------------------------------------- the collection

PARTS: tuple[str, ...] = ("cells", "distance", "places", "calibration", "concentration")
ACCUMULATORS: dict[str, type[Accumulator]] = {
    "cells": CellAccuracy,
    "distance": DistanceError,
    "places": PlaceAccuracy,
    "calibration": Calibration,
    "concentration": Concentration,
}


class GeoMetrics(Accumulator):
    """All evaluation metrics of a cell classifier: one collection of accumulators, fed the same
    :class:`ScoredBatch`. ``compute()`` returns one JSON-ready dict (the accumulators' keys);
    ``parts`` picks a subset (validation during training keeps "cells" and "distance").

    To add a metric: write an :class:`Accumulator`, add it to :data:`ACCUMULATORS` and build it
    in ``__init__``; evaluation, validation, the report and the card pick it up from here.
    """

    def __init__(
        self,
        centroid_lat: np.ndarray,
        centroid_lon: np.ndarray,
        ks: Sequence[int] = TOP_KS,
        thresholds_km: Sequence[float] = DISTANCE_THRESHOLDS_KM,
        place_levels: Sequence[str] = PLACE_LEVELS,
        n_bins: int = ECE_BINS,
        radius_km: float = CONCENTRATION_RADIUS_KM,
        parts: Sequence[str] = PARTS,
    ) -> None:
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown metric parts {sorted(unknown)}; use {PARTS}")
        self.centroid_lat = np.asarray(centroid_lat, dtype=np.float64)
        self.centroid_lon = np.asarray(centroid_lon, dtype=np.float64)
        build: dict[str, Callable[[], Accumulator]] = {
            "cells": lambda: CellAccuracy(ks),
            "distance": lambda: DistanceError(thresholds_km),
            "places": lambda: PlaceAccuracy(place_levels),
            "calibration": lambda: Calibration(n_bins),
            "concentration": lambda: Concentration(self.centroid_lat, self.centroid_lon, radius_km),
        }
        wanted = [p for p in PARTS if p in parts and (p != "places" or place_levels)]
        self.parts: dict[str, Accumulator] = {name: build[name]() for name in wanted}

    def reset(self) -> None:
        for part in self.parts.values():
            part.reset()

    def update(self, batch: ScoredBatch) -> None:
        for part in self.parts.values():
            part.update(batch)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in self.parts.values():
            out.update(part.compute())
        return out

    @staticmethod
    def rows_of(m: Mapping[str, Any]) -> list[Row]:
        """Every headline number of a metrics dict, without the unmeasured (None) ones."""
        measured = [acc for acc in ACCUMULATORS.values() if acc.key in m]
        rows = [row for acc in measured for row in acc.rows_of(m)]
        return [(t, n, float(v)) for t, n, v in rows if v is not None]

    @staticmethod
    def tables_of(m: Mapping[str, Any]) -> list[Table]:
        measured = [acc for acc in ACCUMULATORS.values() if acc.key in m]
        return [table for acc in measured for table in acc.tables_of(m)]

    def state(self) -> dict[str, Any]:
        return {name: part.state() for name, part in self.parts.items()}

    def merge_state(self, state: Mapping[str, Any]) -> None:
        for name, part in self.parts.items():
            part.merge_state(state[name])

    def sync(self, all_gather: Callable[[Any], list[Any]]) -> None:
        """Replace this process's state by the merge of every process's: ``all_gather`` takes
        one picklable state and returns the list of all of them (torch.distributed's
        ``all_gather_object``, wrapped)."""
        states = all_gather(self.state())
        self.reset()
        for state in states:
            self.merge_state(state)
