"""Streaming evaluation metrics: every accumulator takes one batch of NumPy arrays at a time.

Evaluation on OpenStreetView-5M means 1M+ images x thousands of cells, so nothing here keeps
logits: per-batch work reduces them to counts and sums, and only a few numbers per image
(distance in float64, entropy and local mass in float32) are kept for exact medians.
Conventions follow the OpenStreetView-5M benchmark code: haversine distance with R = 6371 km,
"within X km" is the strict ``d < X``, GeoGuessr score ``5000 * exp(-d / 1492.7)``, and place
labels built from ``reverse_geocoder`` as ``cc``, ``admin1_cc``, ``admin2_admin1_cc``,
``name_admin2_admin1_cc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from geovit.geo import EARTH_RADIUS_KM, geoscore, haversine_km

DISTANCE_THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)
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


# ----------------------------------------------------------------------------- accumulators


class CellAccuracy:
    """Top-k cell accuracy in two views, plus cross-entropy and counts.

    ``all_images``: every image; those whose true location lies outside every kept cell
    (label -1) count as wrong. ``in_cell_images``: only images with a class (the design's view,
    which silently dropped the others). Cross-entropy needs a class, so it is over in-cell images.
    """

    def __init__(self, ks: Sequence[int] = (1, 3, 5)) -> None:
        self.ks = tuple(sorted({int(k) for k in ks}))
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"top-k values must be positive integers, got {ks}")
        self.n_images = 0
        self.n_outside = 0
        self.hits = np.zeros(len(self.ks), dtype=np.int64)
        self.nll_sum = 0.0

    def update(self, log_probs: np.ndarray, labels: np.ndarray) -> None:
        """log_probs: (B,K) log-softmax of temperature-scaled logits; labels: (B,), -1 = none."""
        labels = np.asarray(labels, dtype=np.int64)
        rank = true_class_rank(log_probs, labels)
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


class DistanceError:
    """Great-circle error of the predicted point, with exact mean/median and strict-< accuracies.

    Sums, threshold counts and the per-image distances kept for the median are all float64
    (8 bytes per image: float32 would move the exact median by ~1e-5 km).
    """

    def __init__(self, thresholds_km: Sequence[float] = DISTANCE_THRESHOLDS_KM) -> None:
        self.thresholds = np.asarray(sorted(thresholds_km), dtype=np.float64)
        self.within = np.zeros(len(self.thresholds), dtype=np.int64)
        self.n = 0
        self.dist_sum = 0.0
        self.score_sum = 0.0
        self._chunks: list[np.ndarray] = []

    def update(
        self, true_lat: np.ndarray, true_lon: np.ndarray, pred_lat: np.ndarray, pred_lon: np.ndarray
    ) -> np.ndarray:
        """Add one batch; returns its distances in km (float64)."""
        d = np.asarray(haversine_km(true_lat, true_lon, pred_lat, pred_lon), dtype=np.float64)
        self.n += d.size
        self.dist_sum += float(d.sum())
        self.score_sum += float(np.asarray(geoscore(d), dtype=np.float64).sum())
        self.within += (d[:, None] < self.thresholds[None, :]).sum(axis=0)
        self._chunks.append(d)
        return d

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


class PlaceAccuracy:
    """Country / region / sub-region / city accuracy of the reverse-geocoded predicted point.

    Predictions are cell centroids, so the geocoder cache holds at most K entries. Rows whose true
    label is missing are masked out of that level (and counted in ``n_labelled``).
    """

    def __init__(self, levels: Sequence[str] = PLACE_LEVELS) -> None:
        unknown = set(levels) - set(PLACE_LEVELS)
        if unknown:
            raise ValueError(f"unknown place levels {sorted(unknown)}; use {PLACE_LEVELS}")
        self.levels = tuple(levels)
        self.correct = dict.fromkeys(self.levels, 0)
        self.labelled = dict.fromkeys(self.levels, 0)
        self._cache: dict[tuple[float, float], tuple[str, ...]] = {}

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

    def update(
        self, pred_lat: np.ndarray, pred_lon: np.ndarray, true_places: Mapping[str, Sequence[Any]]
    ) -> None:
        """true_places: level -> (B,) labels (``unique_<level>`` column values); levels absent
        from the mapping are skipped for this batch."""
        pred = self.predicted_places(pred_lat, pred_lon)
        for level in self.levels:
            if level not in true_places:
                continue
            truth = np.asarray(true_places[level], dtype=object)
            mask = label_mask(truth)
            self.labelled[level] += int(mask.sum())
            self.correct[level] += int((pred[level][mask] == truth[mask]).sum())

    def compute(self) -> dict[str, Any]:
        return {
            "place_accuracy": {
                level: {
                    "accuracy": _ratio(self.correct[level], self.labelled[level]),
                    "n_labelled": self.labelled[level],
                }
                for level in self.levels
            }
        }


class Calibration:
    """Expected calibration error of the top-1 confidence with equal-width bins.

    ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|, bins (b/M, (b+1)/M] as in Guo et al. (2017).
    """

    def __init__(self, n_bins: int = ECE_BINS) -> None:
        self.n_bins = int(n_bins)
        self.edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        self.count = np.zeros(self.n_bins, dtype=np.int64)
        self.conf_sum = np.zeros(self.n_bins, dtype=np.float64)
        self.correct = np.zeros(self.n_bins, dtype=np.int64)

    def update(self, confidence: np.ndarray, correct: np.ndarray) -> None:
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


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE of a whole array at once (same binning as :class:`Calibration`)."""
    cal = Calibration(n_bins)
    cal.update(confidence, correct)
    return cal.compute()["calibration"]["ece"]


class Concentration:
    """How concentrated each predicted distribution is: entropy (nats) and the probability mass
    on cells whose centroid lies within ``radius_km`` of the top cell's centroid (top included).
    """

    def __init__(
        self,
        centroid_lat: np.ndarray,
        centroid_lon: np.ndarray,
        radius_km: float = CONCENTRATION_RADIUS_KM,
    ) -> None:
        self.radius_km = float(radius_km)
        self.indptr, self.indices = neighbours_within(centroid_lat, centroid_lon, radius_km)
        self._entropy: list[np.ndarray] = []
        self._mass: list[np.ndarray] = []

    def update(self, log_probs: np.ndarray) -> None:
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


class GeoMetrics:
    """All evaluation metrics of a cell classifier, fed batch by batch.

    The predicted location of an image is the centroid of its top cell unless ``update`` is
    given another (geovit.points). ``compute()`` returns one
    JSON-ready dict (see the keys of the individual accumulators).
    """

    def __init__(
        self,
        centroid_lat: np.ndarray,
        centroid_lon: np.ndarray,
        ks: Sequence[int] = (1, 3, 5),
        thresholds_km: Sequence[float] = DISTANCE_THRESHOLDS_KM,
        place_levels: Sequence[str] = PLACE_LEVELS,
        n_bins: int = ECE_BINS,
        radius_km: float = CONCENTRATION_RADIUS_KM,
    ) -> None:
        self.centroid_lat = np.asarray(centroid_lat, dtype=np.float64)
        self.centroid_lon = np.asarray(centroid_lon, dtype=np.float64)
        self.cells = CellAccuracy(ks)
        self.distance = DistanceError(thresholds_km)
        self.places = PlaceAccuracy(place_levels) if place_levels else None
        self.calibration = Calibration(n_bins)
        self.concentration = Concentration(self.centroid_lat, self.centroid_lon, radius_km)

    def update(
        self,
        logits: np.ndarray,
        labels: np.ndarray,
        true_lat: np.ndarray,
        true_lon: np.ndarray,
        true_places: Mapping[str, Sequence[Any]] | None = None,
        pred: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """logits: (B,K) temperature-scaled; labels: (B,) class or -1; true_places: level ->
        labels in ``unique_*`` format, or None to geocode the true coordinates; pred: the
        predicted (lat, lon) of distances and places, by default the top cell's centroid."""
        logp = log_softmax(logits)
        labels = np.asarray(labels, dtype=np.int64)
        top = logp.argmax(axis=1)
        pred_lat, pred_lon = pred or (self.centroid_lat[top], self.centroid_lon[top])
        self.cells.update(logp, labels)
        self.distance.update(true_lat, true_lon, pred_lat, pred_lon)
        if self.places is not None:
            if true_places is None:
                true_places = reverse_geocode(true_lat, true_lon)
            self.places.update(pred_lat, pred_lon, true_places)
        self.calibration.update(np.exp(logp[np.arange(len(top)), top]), top == labels)
        self.concentration.update(logp)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in (self.cells, self.distance, self.places, self.calibration, self.concentration):
            if part is not None:
                out.update(part.compute())
        return out
