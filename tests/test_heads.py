"""Heads and losses against hand computations: haversine smoothing equals PIGEON's formula, a
perfect offset returns the true point, a hierarchy multiplies its partitions' probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geovit import s2
from geovit.cells import CellPartition
from geovit.checkpoint import load_checkpoint, save_checkpoint
from geovit.errors import GeovitError
from geovit.geo import EARTH_RADIUS_KM, from_tangent, haversine_km, to_tangent
from geovit.heads import HEADS, HybridHead, LinearHead, create_head
from geovit.losses import LOSSES, create_loss, haversine_targets
from geovit.model import GeoViT, model_config

RNG = np.random.default_rng(7)
POINTS = np.concatenate(
    [RNG.normal([48.0, 2.0], 1.5, (300, 2)), RNG.normal([-33.0, 151.0], 1.5, (300, 2))]
)


@pytest.fixture(scope="module")
def fine() -> CellPartition:
    return CellPartition.build(POINTS[:, 0], POINTS[:, 1], t1=40, t2=5)


@pytest.fixture(scope="module")
def coarse() -> CellPartition:
    return CellPartition.build(POINTS[:, 0], POINTS[:, 1], t1=200, t2=5)


# ---------------------------------------------------------------------------- tangent plane


def test_tangent_plane_matches_the_gnomonic_formula_and_inverts_exactly():
    # 1 degree north of (0, 0): gnomonic north = R tan(1 deg), east = 0 (hand computation)
    east, north = to_tangent(0.0, 0.0, 1.0, 0.0)
    assert abs(east) < 1e-9 and north == pytest.approx(EARTH_RADIUS_KM * math.tan(math.radians(1)))
    lat0, lon0 = RNG.uniform(-80, 80, 500), RNG.uniform(-180, 180, 500)
    lat, lon = lat0 + RNG.uniform(-5, 5, 500), lon0 + RNG.uniform(-5, 5, 500)
    lat = np.clip(lat, -89.0, 89.0)
    back_lat, back_lon = from_tangent(lat0, lon0, *to_tangent(lat0, lon0, lat, lon))
    np.testing.assert_allclose(back_lat, lat, atol=1e-9)
    np.testing.assert_allclose((back_lon - lon + 180) % 360 - 180, 0, atol=1e-9)
    with pytest.raises(GeovitError, match="90 degrees"):
        to_tangent(0.0, 0.0, 0.0, 120.0)


# ---------------------------------------------------------------------------- losses


def test_haversine_targets_equal_pigeons_formula(fine: CellPartition):
    x = POINTS[:5]
    labels = fine.assign(x[:, 0], x[:, 1])
    centroids = np.stack([fine.centroid_lat, fine.centroid_lon], axis=1)
    tau = 75.0
    q = haversine_targets(torch.tensor(x), torch.tensor(centroids), tau).numpy()
    d = haversine_km(x[:, :1], x[:, 1:], fine.centroid_lat, fine.centroid_lon)  # (5, K) NumPy
    d_true = d[np.arange(5), labels][:, None]
    expected = np.exp(-(d - d_true) / tau)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(q, expected, rtol=1e-10, atol=1e-15)


def test_haversine_loss_is_cross_entropy_against_the_smoothed_target(fine: CellPartition):
    x = torch.tensor(POINTS[:8])
    labels = torch.tensor(fine.assign(POINTS[:8, 0], POINTS[:8, 1]))
    centroids = torch.tensor(np.stack([fine.centroid_lat, fine.centroid_lon], axis=1))
    logits = torch.randn(8, len(fine), generator=torch.Generator().manual_seed(0))
    loss = create_loss("haversine", tau=75.0)(logits, labels, x, centroids)
    q = haversine_targets(x, centroids, 75.0)
    by_hand = -(q * torch.log(torch.softmax(logits.double(), -1))).sum(1).mean()
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)
    # a tiny tau puts all the mass on the nearest centroid: plain cross-entropy on that cell
    d = haversine_km(POINTS[:8, :1], POINTS[:8, 1:], fine.centroid_lat, fine.centroid_lon)
    nearest = torch.tensor(d.argmin(axis=1))
    sharp = create_loss("haversine", tau=1e-3)(logits, labels, x, centroids)
    assert float(sharp) == pytest.approx(float(F.cross_entropy(logits, nearest)), rel=1e-5)


def test_cross_entropy_ignores_photos_outside_every_cell():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [9.0, 9.0, 9.0]])
    labels = torch.tensor([0, 2, -1])
    loss = create_loss("ce")(logits, labels, torch.zeros(3, 2), torch.zeros(3, 2))
    by_hand = -(torch.log_softmax(logits[0], 0)[0] + torch.log_softmax(logits[1], 0)[2]) / 2
    assert float(loss) == pytest.approx(float(by_hand))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_and_learns_the_true_cell(name: str, fine: CellPartition):
    """A gradient step on each registered loss raises the true cell's probability."""
    x = POINTS[::50]
    x = x[fine.assign(x[:, 0], x[:, 1]) >= 0]
    labels = torch.tensor(fine.assign(x[:, 0], x[:, 1]))
    centroids = torch.tensor(np.stack([fine.centroid_lat, fine.centroid_lon], axis=1))
    logits = torch.zeros(len(x), len(fine), requires_grad=True)
    loss = create_loss(name)(logits, labels, torch.tensor(x), centroids)
    loss.backward()
    stepped = logits.detach() - 10.0 * logits.grad
    p = torch.softmax(stepped, -1)[torch.arange(len(x)), labels]
    assert torch.isfinite(loss) and (p > 1.0 / len(fine)).all()


def test_unknown_names_fail_in_one_line():
    with pytest.raises(GeovitError, match="unknown loss 'nope'"):
        create_loss("nope")
    with pytest.raises(GeovitError, match="unknown head 'nope'"):
        create_head("nope", 8, 3)
    with pytest.raises(GeovitError, match="tau"):
        create_loss("haversine", tau=0.0)


# ---------------------------------------------------------------------------- heads


def test_a_perfect_offset_returns_the_true_point(fine: CellPartition):
    """Offsets from CellPartition.offsets, put out by the hybrid head and decoded from the
    top cell, give back each photo's own coordinates (to 1e-6 degrees)."""
    x = POINTS[::7]
    x = x[fine.assign(x[:, 0], x[:, 1]) >= 0]
    labels = fine.assign(x[:, 0], x[:, 1])
    targets = fine.offsets(labels, x[:, 0], x[:, 1])
    assert np.abs(targets).max() < 2.0  # a photo lies within its cell: about one cell size away
    head = HybridHead(4, len(fine))
    with torch.no_grad():  # no weights, only biases: one photo at a time
        lat, lon = [], []
        for label, target in zip(labels, targets, strict=True):
            offsets = np.zeros((len(fine), 2))
            offsets[label] = target
            head.offset.bias.copy_(torch.tensor(offsets.reshape(-1)))
            out = head.forward_outputs(torch.zeros(1, 4))
            predicted = out["offset"][0, label].double().numpy()
            la, lo = fine.points_at(label, predicted)
            lat.append(la)
            lon.append(lo)
    np.testing.assert_allclose(lat, x[:, 0], atol=1e-6)
    np.testing.assert_allclose(lon, x[:, 1], atol=1e-6)


def test_offset_loss_is_l1_or_l2_on_the_true_cell_only():
    head = HybridHead(3, 4)
    pooled = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        head.offset.weight.normal_()
    out = head.forward_outputs(pooled)
    labels = torch.tensor([2, -1, 0])
    targets = torch.tensor([[0.5, -0.25], [float("nan"), float("nan")], [0.0, 1.0]])
    rows = out["offset"][[0, 2], [2, 0]]
    l1 = (rows - targets[[0, 2]]).abs().mean()
    l2 = ((rows - targets[[0, 2]]) ** 2).mean()
    with torch.no_grad():
        got_l1, got_l2 = (float(head.aux_loss(out, labels, targets, k)) for k in ("l1", "l2"))
    assert got_l1 == pytest.approx(float(l1))
    assert got_l2 == pytest.approx(float(l2))
    assert LinearHead(3, 4).aux_loss(out, labels, targets, "l1") is None


def test_parents_contain_their_fine_cells(fine: CellPartition, coarse: CellPartition):
    parents = fine.parents_in(coarse)
    assert len(coarse) < len(fine) and (parents >= 0).all()
    # S2: a fine cell lies in a coarse cell iff its ancestor at the coarse level is that cell
    ancestor = s2.cell_parent(fine.cell_ids, coarse.levels[parents])
    assert (ancestor == coarse.cell_ids[parents]).all()


def test_a_hierarchy_multiplies_fine_and_parent_probabilities(fine, coarse):
    head = LinearHead(5, len(fine), [len(coarse)])
    parents = fine.parents_in(coarse)
    head.set_parents([torch.from_numpy(parents)])
    pooled = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    out = head.forward_outputs(pooled)
    p_fine = torch.softmax(out["partition_logits"][0].double(), -1)
    p_coarse = torch.softmax(out["partition_logits"][1].double(), -1)
    product = p_fine * p_coarse[:, parents]
    expected = product / product.sum(1, keepdim=True)
    torch.testing.assert_close(torch.softmax(out["logits"].double(), -1), expected, rtol=1e-5,
                               atol=1e-7)  # fmt: skip


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("partitions", [1, 2])
def test_every_head_round_trips_through_a_checkpoint(tmp_path, head, partitions, fine, coarse):
    """Each registered head, with and without a coarser partition: its declared outputs, the
    same outputs after save/load, the parent maps kept in the weights."""
    extra = [coarse] if partitions == 2 else []
    cfg = model_config("small", len(fine), image_size=32, head=head,
                       extra_classes=[len(c) for c in extra])  # fmt: skip
    torch.manual_seed(0)
    model = GeoViT(cfg).eval()
    model.head.set_parents([torch.from_numpy(fine.parents_in(c)) for c in extra])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_outputs(x)
    assert set(HEADS[head].outputs) | {"embedding"} <= set(out)
    path = save_checkpoint(tmp_path / "model.pt", model, fine, extra_cells=extra, train={})
    ckpt = load_checkpoint(path)
    assert [len(c) for c in ckpt.extra_cells] == [len(c) for c in extra]
    with torch.no_grad():
        again = ckpt.model.forward_outputs(x)
    for name in HEADS[head].outputs:
        torch.testing.assert_close(again[name], out[name])
