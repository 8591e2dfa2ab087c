"""Metric formulas against hand computation and brute-force references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from geovit import metrics
from geovit.metrics import (
    Calibration,
    CellAccuracy,
    Concentration,
    DistanceError,
    GeoMetrics,
    PlaceAccuracy,
    ScoredBatch,
    expected_calibration_error,
    log_softmax,
    neighbours_within,
    top_cell_points,
    topk_indices,
)

R = 6371.0
KM_PER_DEG = R * math.pi / 180.0


def _chord_km(lat1, lon1, lat2, lon2):
    """Great-circle distance through the chord of unit vectors (independent of haversine)."""

    def xyz(lat, lon):
        la, lo = np.radians(lat), np.radians(lon)
        return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1)

    chord = np.linalg.norm(xyz(lat1, lon1) - xyz(lat2, lon2), axis=-1)
    return 2 * R * np.arcsin(np.clip(chord / 2, 0, 1))


def _assert_close_nested(a, b):
    """Same keys everywhere, numbers equal up to float summation order."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_close_nested(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_close_nested(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
    else:
        assert a == b


def _scored(collection, logits, labels, tlat, tlon, places=None):
    """A scored batch whose predicted point is the top cell's centroid."""
    plat, plon = top_cell_points(logits, collection.centroid_lat, collection.centroid_lon)
    return ScoredBatch.from_logits(logits, labels, tlat, tlon, plat, plon, places)


def test_cell_accuracy_hand_case():
    logits = np.array(
        [
            [0.1, 2.0, 0.5, -1.0],  # label 1: top-1
            [3.0, 1.0, 2.0, 0.0],  # label 2: rank 1 -> top-3 only
            [0.0, 5.0, 0.0, 0.0],  # label -1: outside every cell
            [0.0, 0.0, 0.0, 0.0],  # label 0: all tied -> counted against the true class
        ]
    )
    labels = np.array([1, 2, -1, 0])
    acc = CellAccuracy(ks=(1, 3))
    acc.add(log_softmax(logits), labels)
    out = acc.compute()
    assert (out["n_images"], out["n_outside_cells"], out["n_in_cell"]) == (4, 1, 3)
    assert out["cell_accuracy"]["all_images"] == {"top1": 1 / 4, "top3": 2 / 4}
    assert out["cell_accuracy"]["in_cell_images"] == {"top1": 1 / 3, "top3": 2 / 3}

    def nll(z, y):
        return math.log(sum(math.exp(v) for v in z)) - z[y]

    expected = (nll(logits[0], 1) + nll(logits[1], 2) + nll(logits[3], 0)) / 3
    assert out["cross_entropy"] == pytest.approx(expected, rel=1e-12)


def test_cell_accuracy_matches_sorting_reference_and_torch_ce():
    rng = np.random.default_rng(0)
    n, k = 700, 60
    logits = rng.normal(size=(n, k)) * 3
    labels = rng.integers(-1, k, size=n)  # about 1 in 61 outside
    labels[:20] = -1
    inside = labels >= 0
    logits[np.nonzero(inside)[0], labels[inside]] += 4.0  # informative, so accuracies are not ~0
    ks = (1, 2, 5, 10)

    streamed = CellAccuracy(ks)
    for start, stop in [(0, 1), (1, 100), (100, 333), (333, n)]:
        streamed.add(log_softmax(logits[start:stop]), labels[start:stop])
    once = CellAccuracy(ks)
    once.add(log_softmax(logits), labels)
    _assert_close_nested(streamed.compute(), once.compute())

    order = np.argsort(-logits, axis=1)
    out = streamed.compute()
    for kk in ks:
        hit = np.array([labels[i] in order[i, :kk] for i in range(n)])
        assert out["cell_accuracy"]["all_images"][f"top{kk}"] == hit.sum() / n
        assert out["cell_accuracy"]["in_cell_images"][f"top{kk}"] == hit[inside].mean()
    ce = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits[inside]), torch.from_numpy(labels[inside])
    ).item()
    assert out["cross_entropy"] == pytest.approx(ce, rel=1e-10)


def test_topk_indices_matches_full_sort():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(50, 37))
    for k in (1, 4, 37):
        np.testing.assert_array_equal(topk_indices(scores, k), np.argsort(-scores, axis=1)[:, :k])


def test_distance_error_hand_case():
    # Points on the equator/meridians, so distances are R * angle exactly.
    true_lat = np.array([0.0, 0.0, 0.0, 10.0])
    true_lon = np.array([0.0, 0.0, 0.0, 20.0])
    pred_lat = np.array([0.0, 0.0, 0.0, 12.0])
    pred_lon = np.array([0.0, 1.0, 180.0, 20.0])
    d = np.array([0.0, KM_PER_DEG, 180 * KM_PER_DEG, 2 * KM_PER_DEG])  # 0, 111.19, 20015.1, 222.4
    acc = DistanceError(thresholds_km=(0.0, 1.0, 200.0, 250.0, 25000.0))
    acc.add(true_lat[:2], true_lon[:2], pred_lat[:2], pred_lon[:2])
    acc.add(true_lat[2:], true_lon[2:], pred_lat[2:], pred_lon[2:])
    out = acc.compute()
    dist = out["distance"]
    assert dist["mean_km"] == pytest.approx(d.mean(), rel=1e-9)
    assert dist["median_km"] == pytest.approx((d[1] + d[3]) / 2, rel=1e-6)  # float32 storage
    # strict <: a 0 km error is not "within 0 km"
    assert dist["accuracy_within_km"] == {
        "0": 0.0,
        "1": 0.25,
        "200": 0.5,
        "250": 0.75,
        "25000": 1.0,
    }
    expected_score = np.mean([5000 * math.exp(-x / 1492.7) for x in d])
    assert out["geoscore_mean"] == pytest.approx(expected_score, rel=1e-12)
    assert "6371" in dist["convention"] and "<" in dist["convention"]


def test_calibration_hand_case_and_reference():
    conf = np.array([0.95, 0.95, 0.55, 0.3])
    correct = np.array([1, 0, 1, 0])
    expected = 2 / 4 * abs(0.5 - 0.95) + 1 / 4 * abs(1 - 0.55) + 1 / 4 * abs(0 - 0.3)
    assert expected_calibration_error(conf, correct) == pytest.approx(expected, abs=1e-12)

    cal = Calibration(15)
    cal.add(conf, correct)
    bins = cal.compute()["calibration"]["bins"]
    assert [b["count"] for b in bins if b["count"]] == [1, 1, 2]
    assert bins[14]["accuracy"] == 0.5 and bins[14]["confidence"] == pytest.approx(0.95)

    # Guo et al.'s loop formulation on random data, fed in two batches.
    rng = np.random.default_rng(2)
    conf = rng.uniform(0, 1, 1000)
    correct = rng.uniform(0, 1, 1000) < conf**1.5
    edges = np.linspace(0, 1, 16)
    ref = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ref += m.mean() * abs(correct[m].mean() - conf[m].mean())
    streamed = Calibration(15)
    streamed.add(conf[:400], correct[:400])
    streamed.add(conf[400:], correct[400:])
    assert streamed.compute()["calibration"]["ece"] == pytest.approx(ref, abs=1e-12)


def test_neighbours_within_matches_dense_matrix():
    rng = np.random.default_rng(3)
    lat = rng.uniform(30, 50, 300)
    lon = rng.uniform(-125, -100, 300)
    indptr, indices = neighbours_within(lat, lon, 200.0, chunk=64)
    dense = _chord_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :]) < 200.0
    for i in range(len(lat)):
        np.testing.assert_array_equal(indices[indptr[i] : indptr[i + 1]], np.nonzero(dense[i])[0])


def test_concentration_hand_case():
    # A and B are 111 km apart, C is 1112 km from A.
    conc = Concentration(np.array([0.0, 0.0, 0.0]), np.array([0.0, 1.0, 10.0]), radius_km=200.0)
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    conc.add(np.log(probs))
    out = conc.compute()["concentration"]
    assert out["mass_within_200km"]["mean"] == pytest.approx((0.8 + 0.7) / 2, rel=1e-6)
    entropies = [-sum(p * math.log(p) for p in row) for row in probs]
    assert out["entropy_nats"]["mean"] == pytest.approx(np.mean(entropies), rel=1e-6)
    assert out["entropy_nats"]["median"] == pytest.approx(np.mean(entropies), rel=1e-6)


def test_place_accuracy_masks_missing_labels_and_caches(monkeypatch):
    import reverse_geocoder

    calls: list[int] = []
    search = reverse_geocoder.search

    def counting_search(coords, *args, **kwargs):
        calls.append(len(coords))
        return search(coords, *args, **kwargs)

    monkeypatch.setattr(reverse_geocoder, "search", counting_search)
    paris, sf = (48.8566, 2.3522), (37.7749, -122.4194)
    pred_lat = np.array([paris[0], sf[0], sf[0], sf[0]])
    pred_lon = np.array([paris[1], sf[1], sf[1], sf[1]])
    truth = {
        "country": ["FR", "FR", float("nan"), "US"],
        "region": ["Ile-de-France_FR", "California_US", "", "NaN"],
    }
    acc = PlaceAccuracy(levels=("country", "region"))
    acc.add(pred_lat[:2], pred_lon[:2], {k: v[:2] for k, v in truth.items()})
    acc.add(pred_lat[2:], pred_lon[2:], {k: v[2:] for k, v in truth.items()})
    out = acc.compute()["place_accuracy"]
    assert out["country"] == {"accuracy": 2 / 3, "n_labelled": 3}
    assert out["region"] == {"accuracy": 1.0, "n_labelled": 2}
    assert calls == [2]  # the second batch only hit the cache


def test_reverse_geocode_format_matches_osv5m_labels():
    places = metrics.reverse_geocode(np.array([37.7749]), np.array([-122.4194]))
    assert places["country"][0] == "US"
    assert places["region"][0] == "California_US"
    assert places["sub-region"][0].endswith("_California_US")
    assert places["city"][0].endswith(places["sub-region"][0])


def test_geometrics_streaming_equals_brute_force():
    rng = np.random.default_rng(4)
    n, k = 400, 40
    clat, clon = rng.uniform(30, 50, k), rng.uniform(-125, -100, k)
    logits = rng.normal(size=(n, k)) * 2
    labels = rng.integers(-1, k, size=n)
    tlat, tlon = rng.uniform(30, 50, n), rng.uniform(-125, -100, n)

    streamed = GeoMetrics(clat, clon, ks=(1, 5), place_levels=())
    for start in range(0, n, 64):
        s = slice(start, start + 64)
        streamed.update(_scored(streamed, logits[s], labels[s], tlat[s], tlon[s]))
    out = streamed.compute()
    once = GeoMetrics(clat, clon, ks=(1, 5), place_levels=())
    once.update(_scored(once, logits, labels, tlat, tlon))
    _assert_close_nested(out, once.compute())

    top = np.argsort(-logits, axis=1)[:, 0]
    d = _chord_km(tlat, tlon, clat[top], clon[top])
    assert out["distance"]["mean_km"] == pytest.approx(d.mean(), rel=1e-9)
    assert out["distance"]["median_km"] == pytest.approx(np.median(d), rel=1e-6)
    for t, v in out["distance"]["accuracy_within_km"].items():
        assert v == np.mean(d < float(t))
    p = torch.softmax(torch.from_numpy(logits), 1).numpy()
    conf = p.max(1)
    assert out["calibration"]["ece"] == pytest.approx(
        expected_calibration_error(conf, top == labels), abs=1e-12
    )
    near = _chord_km(clat[top][:, None], clon[top][:, None], clat[None], clon[None]) < 200
    mass = (p * near).sum(1)
    assert out["concentration"]["mass_within_200km"]["mean"] == pytest.approx(mass.mean(), rel=1e-6)
    assert out["n_images"] == n and out["n_outside_cells"] == int((labels < 0).sum())


def test_temperature_fit_recovers_overconfidence():
    from geovit.calibration import fit_temperature, nll_at

    rng = np.random.default_rng(5)
    n, k = 4000, 20
    true_logits = rng.normal(size=(n, k)) * 1.5
    p = torch.softmax(torch.from_numpy(true_logits), 1).numpy()
    # Labels drawn from softmax(true_logits): that distribution is calibrated by construction.
    labels = (p.cumsum(1) > rng.uniform(size=(n, 1))).argmax(1)
    labels[:50] = -1  # no class: ignored by the fit
    fit = fit_temperature(true_logits * 3.0, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.08)
    assert fit.n_images == n - 50
    assert fit.ece_after < fit.ece_before / 3
    assert fit.nll_after < fit.nll_before
    assert not fit.at_bound
    # A minimum: nudging T either way does not lower the NLL.
    inside = labels >= 0
    for t in (fit.temperature * 0.97, fit.temperature * 1.03):
        assert nll_at(true_logits[inside] * 3.0, labels[inside], t) >= fit.nll_after


def test_temperature_fit_is_the_brute_force_grid_minimum():
    """The bounded search lands on the minimum of the NLL over a fine log-T grid (the grid
    spacing is the tolerance), as the earlier golden-section search did."""
    from geovit.calibration import fit_temperature, nll_at

    rng = np.random.default_rng(8)
    logits = rng.normal(size=(1500, 12)) * 4.0
    labels = rng.integers(0, 12, 1500)
    labels[:600] = logits[:600].argmax(1)  # partly informative: an interior optimum
    grid = np.exp(np.linspace(np.log(0.2), np.log(20.0), 4001))
    nll = np.array([nll_at(logits, labels, t) for t in grid])
    fit = fit_temperature(logits, labels)
    step = np.log(grid[1] / grid[0])
    assert abs(np.log(fit.temperature) - np.log(grid[nll.argmin()])) <= step
    assert fit.nll_after <= nll.min() + 1e-9
    assert not fit.at_bound


def test_temperature_fit_flags_signal_free_logits():
    from geovit.calibration import T_MAX, fit_temperature

    rng = np.random.default_rng(6)
    logits = rng.normal(size=(2000, 10))
    labels = logits.argmin(axis=1)  # any sharpening hurts: the best is uniform, T -> inf
    fit = fit_temperature(logits, labels)
    assert fit.at_bound and fit.temperature == pytest.approx(T_MAX, rel=1e-3)


def test_median_distance_is_exact_in_float64():
    """The median of many batches equals statistics.median of the haversine distances computed
    one by one with math (float64): float32 storage would move it by ~1e-5 km."""
    import statistics

    rng = np.random.default_rng(3)
    lat1, lat2 = rng.uniform(-60, 60, (2, 1001))
    lon1, lon2 = rng.uniform(-180, 180, (2, 1001))
    acc = DistanceError()
    for s in range(0, 1001, 100):
        acc.add(lat1[s : s + 100], lon1[s : s + 100], lat2[s : s + 100], lon2[s : s + 100])

    def hav(a1, o1, a2, o2):
        p1, p2 = math.radians(a1), math.radians(a2)
        h = (
            math.sin((p2 - p1) / 2) ** 2
            + math.cos(p1) * math.cos(p2) * math.sin(math.radians(o2 - o1) / 2) ** 2
        )
        return 2 * 6371.0 * math.asin(math.sqrt(h))

    want = statistics.median(map(hav, lat1, lon1, lat2, lon2))
    assert acc.compute()["distance"]["median_km"] == pytest.approx(want, rel=1e-12, abs=0)
    assert acc.distances.dtype == np.float64


def _random_batch(rng, n, clat, clon):
    k = len(clat)
    logits = rng.normal(size=(n, k)) * 2
    labels = rng.integers(-1, k, size=n)
    return logits, labels, rng.uniform(30, 50, n), rng.uniform(-125, -100, n)


@pytest.mark.parametrize("part", metrics.PARTS)
def test_every_accumulator_merges_like_one_pass(part):
    """The DDP contract of the protocol: two accumulators fed one half each, merged through
    their states, give the result of one accumulator fed both halves (and rows()/tables() read
    it back)."""
    rng = np.random.default_rng(9)
    clat, clon = rng.uniform(30, 50, 30), rng.uniform(-125, -100, 30)
    whole = GeoMetrics(clat, clon, ks=(1, 3), place_levels=("country",), parts=(part,))
    halves = [GeoMetrics(clat, clon, ks=(1, 3), place_levels=("country",), parts=(part,))
              for _ in range(2)]  # fmt: skip
    for i in range(4):
        logits, labels, tlat, tlon = _random_batch(rng, 25 + i, clat, clon)
        batch = _scored(whole, logits, labels, tlat, tlon, {"country": ["US"] * len(labels)})
        whole.update(batch)
        halves[i % 2].update(batch)
    merged = GeoMetrics(clat, clon, ks=(1, 3), place_levels=("country",), parts=(part,))
    merged.sync(lambda state: [h.state() for h in halves])  # what all_gather_object returns
    _assert_close_nested(merged.compute(), whole.compute())
    halves[0].merge(halves[1])
    _assert_close_nested(halves[0].compute(), whole.compute())
    _assert_close_nested([list(r) for r in merged.rows()], [list(r) for r in whole.rows()])


def test_geometrics_rows_and_tables_read_back_the_numbers():
    rng = np.random.default_rng(10)
    clat, clon = rng.uniform(30, 50, 20), rng.uniform(-125, -100, 20)
    m = GeoMetrics(clat, clon, ks=(1, 5), place_levels=())
    m.update(_scored(m, *_random_batch(rng, 50, clat, clon)))
    out = m.compute()
    rows = {name: v for _, name, v in m.rows()}
    assert (
        rows["Cell accuracy top5 (all test images)"] == out["cell_accuracy"]["all_images"]["top5"]
    )
    assert rows["Median great-circle error (km)"] == out["distance"]["median_km"]
    assert rows["Expected calibration error (15 bins)"] == out["calibration"]["ece"]
    assert metrics.median_km(out) == out["distance"]["median_km"]
    assert metrics.within_km(out, 200) == out["distance"]["accuracy_within_km"]["200"]
    assert metrics.top_accuracy(out, 5) == out["cell_accuracy"]["all_images"]["top5"]
    titles = [title for title, _, _ in m.tables()]
    assert titles[0] == "Cell accuracy" and "Place accuracy" not in " ".join(titles)


def test_scored_batch_takes_the_predicted_point_as_given():
    """A point estimator other than the top cell's centroid changes the distances only."""
    logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    sb = ScoredBatch.from_logits(logits, [0, 0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 2.0])
    np.testing.assert_allclose(sb.distance_km, [KM_PER_DEG, 2 * KM_PER_DEG], rtol=1e-12)
    np.testing.assert_array_equal(sb.top, [0, 1])
    np.testing.assert_allclose(sb.confidence, [1 / (1 + math.exp(-2))] * 2, rtol=1e-12)
