"""Classification losses over cells, chosen by name (``TrainConfig.loss``, ``--loss NAME``).

Each loss sees one partition's logits (B, K), the photos' cell labels (B,) (-1: outside every
kept cell) and true coordinates (B, 2) in degrees, and the cells' centroids (K, 2): enough for
losses that know geography. A new loss is one class registered here (timm's
``create_classification_loss`` and OpenStreetView-5M's ``LOSSES`` dict are the models).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from geovit.errors import GeovitError
from geovit.geo import DEFAULT_TAU_KM, EARTH_RADIUS_KM

LOSSES: dict[str, type[CellLoss]] = {}


def register_loss(cls: type[CellLoss]) -> type[CellLoss]:
    """Class decorator: make a loss available by its ``name``."""
    LOSSES[cls.name] = cls
    return cls


def create_loss(
    name: str, *, label_smoothing: float = 0.0, tau: float = DEFAULT_TAU_KM
) -> CellLoss:
    if name not in LOSSES:
        raise GeovitError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
    return LOSSES[name](label_smoothing=label_smoothing, tau=tau)


def haversine_km_torch(lat1: torch.Tensor, lon1: torch.Tensor, lat2: torch.Tensor,
                       lon2: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """geo.haversine_km for tensors in degrees (broadcasting; same formula, same radius)."""
    phi1, lam1, phi2, lam2 = (torch.deg2rad(t) for t in (lat1, lon1, lat2, lon2))
    a = (
        torch.sin((phi2 - phi1) / 2) ** 2
        + torch.cos(phi1) * torch.cos(phi2) * torch.sin((lam2 - lam1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a.clamp(0.0, 1.0)))


class CellLoss:
    """logits (B, K), labels (B,), coords (B, 2) deg, centroids (K, 2) deg -> scalar loss."""

    name: ClassVar[str]

    def __init__(self, *, label_smoothing: float = 0.0, tau: float = DEFAULT_TAU_KM) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise GeovitError(f"label smoothing {label_smoothing} must be in [0, 1)")
        if not (tau > 0 and math.isfinite(tau)):
            raise GeovitError(f"--tau {tau} km must be a finite number > 0")
        self.label_smoothing = label_smoothing
        self.tau = tau

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, coords: torch.Tensor,
                 centroids: torch.Tensor) -> torch.Tensor:  # fmt: skip
        raise NotImplementedError


@register_loss
class CrossEntropy(CellLoss):
    """The design's loss: cross-entropy on the true cell (optionally label-smoothed);
    photos outside every kept cell have no class and are ignored."""

    name = "ce"

    def __call__(self, logits, labels, coords, centroids):
        if not (labels >= 0).any():
            return logits.sum() * 0.0
        return F.cross_entropy(
            logits.float(), labels, ignore_index=-1, label_smoothing=self.label_smoothing
        )


def haversine_targets(coords: torch.Tensor, centroids: torch.Tensor, tau: float) -> torch.Tensor:
    """PIGEON's smoothed target q_k proportional to exp(-(d(c_k, x) - d(c_true, x)) / tau).

    Subtracting d(c_true, x) only rescales each row, so q = softmax(-d(c_k, x) / tau): computed
    without the true cell (defined for photos outside every cell too), in float64 over (B, K)
    for the batch, never a K x K matrix.
    """
    c = centroids.to(torch.float64)
    x = coords.to(torch.float64)
    d = haversine_km_torch(x[:, :1], x[:, 1:], c[None, :, 0], c[None, :, 1])  # (B, K)
    return torch.softmax(-d / tau, dim=-1)


@register_loss
class HaversineSmoothing(CellLoss):
    """Cross-entropy against haversine-smoothed targets (PIGEON): a guess in a neighbouring
    cell costs less than one across the world, so the classifier learns geography."""

    name = "haversine"

    def __call__(self, logits, labels, coords, centroids):
        q = haversine_targets(coords, centroids, self.tau).to(torch.float32)
        return -(q * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()
