"""Point estimators: a batch's cell probabilities (and optional model outputs) -> one (lat, lon)
per image.

A classifier answers with a distribution over cells; a map pin needs one point. Each estimator
turns the same inference outputs into that point in its own way, and is registered here by name
(``geovit predict/evaluate/serve --point NAME``). A new estimator is one new registered class:
it declares which model outputs it ``needs`` beyond the probabilities (the predictor computes
only those) and implements :meth:`PointEstimator.locate`. Pure NumPy (no torch), so the ONNX
predictor uses them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from geovit.cells import CellPartition
from geovit.errors import GeovitError
from geovit.geo import haversine_km, latlon_to_xyz, xyz_to_latlon
from geovit.metrics import CONCENTRATION_RADIUS_KM, topk_indices

if TYPE_CHECKING:
    from geovit.gallery import Gallery

DEFAULT_POINT = "top1"
# Cells whose probability `weighted` averages: those within the radius whose mass the
# evaluation's concentration metric reports, so the two describe the same neighbourhood.
WEIGHTED_RADIUS_KM = CONCENTRATION_RADIUS_KM
RETRIEVAL_CELLS = (
    3  # search the gallery images of the top-k cells (PIGEON refines in its top cells)
)
RETRIEVAL_NEIGHBOURS = 1  # answer with the (spherical mean of the) m nearest images' points

Outputs = Mapping[str, np.ndarray]
LatLon = tuple[np.ndarray, np.ndarray]

POINTS: dict[str, type[PointEstimator]] = {}


def register(cls: type[PointEstimator]) -> type[PointEstimator]:
    """Class decorator: make an estimator available as ``--point cls.name``."""
    POINTS[cls.name] = cls
    return cls


def top_cells(probs: np.ndarray) -> np.ndarray:
    """Each row's most probable cell (B,), with the tie rule of the listed top-k cells."""
    return topk_indices(np.asarray(probs), 1)[:, 0]


class PointEstimator:
    """One way to turn inference outputs into a point. Subclasses set ``name``, ``description``
    (completes "predicted point = ..." in reports), ``needs`` (model outputs besides "probs":
    "offset" (B,K,2), "embedding" (B,D)) and implement ``locate``."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    uses_gallery: ClassVar[bool] = False

    def __init__(self, cells: CellPartition, gallery: Gallery | None = None) -> None:
        self.cells = cells

    def locate(self, outputs: Outputs) -> LatLon:
        """Degrees (lat (B,), lon (B,)) from ``outputs["probs"]`` (B,K) and the ``needs``."""
        raise NotImplementedError


@register
class Top1(PointEstimator):
    """The top cell's centroid: the spherical mean of its training photos."""

    name = "top1"
    description = "top cell's centroid"

    def locate(self, outputs: Outputs) -> LatLon:
        top = top_cells(outputs["probs"])
        return self.cells.centroid_lat[top], self.cells.centroid_lon[top]


@register
class Weighted(PointEstimator):
    """The probability-weighted spherical mean of the centroids of the cells within
    WEIGHTED_RADIUS_KM of the top cell's: hedges between neighbouring cells without averaging
    across continents when the model hesitates between far-apart places."""

    name = "weighted"
    description = (
        f"probability-weighted mean of the cells within {WEIGHTED_RADIUS_KM:g} km of the top"
    )

    def __init__(
        self,
        cells: CellPartition,
        gallery: Gallery | None = None,
        radius_km: float = WEIGHTED_RADIUS_KM,
    ) -> None:
        super().__init__(cells)
        self.radius_km = float(radius_km)
        self.xyz = latlon_to_xyz(cells.centroid_lat, cells.centroid_lon)

    def locate(self, outputs: Outputs) -> LatLon:
        probs = np.asarray(outputs["probs"], dtype=np.float64)
        top = top_cells(probs)
        lat, lon = self.cells.centroid_lat, self.cells.centroid_lon
        # (B,K) like the probabilities themselves: no K x K matrix, no precomputed lists.
        near = haversine_km(lat[top, None], lon[top, None], lat, lon) < self.radius_km
        return xyz_to_latlon(np.where(near, probs, 0.0) @ self.xyz)


@register
class Hybrid(PointEstimator):
    """The top cell's centroid moved by the offset head's prediction for that cell (east, north
    in units of the cell's scale_km, in its tangent plane), projected back to the sphere."""

    name = "hybrid"
    description = "top cell's centroid + its predicted offset"
    needs = frozenset({"offset"})

    def locate(self, outputs: Outputs) -> LatLon:
        top = top_cells(outputs["probs"])
        return self.cells.points_at(top, np.asarray(outputs["offset"])[np.arange(len(top)), top])


@register
class Retrieval(PointEstimator):
    """The point of the training image nearest by embedding (cosine) among those of the top
    RETRIEVAL_CELLS cells (the spherical mean of the m nearest for m > 1): refines the cell to
    a street the model has seen. An image with no gallery image in those cells keeps the top
    cell's centroid."""

    name = "retrieval"
    description = f"nearest training image (by embedding) in the top {RETRIEVAL_CELLS} cells"
    needs = frozenset({"embedding"})
    uses_gallery = True

    def __init__(
        self,
        cells: CellPartition,
        gallery: Gallery | None = None,
        k: int = RETRIEVAL_CELLS,
        m: int = RETRIEVAL_NEIGHBOURS,
    ) -> None:
        super().__init__(cells)
        if gallery is None:
            raise GeovitError(
                "--point retrieval needs --index GALLERY; build one with "
                "`geovit index --checkpoint CKPT --data DATA --out gallery.faiss`"
            )
        if gallery.n_cells != len(cells):
            raise GeovitError(
                f"the gallery has {gallery.n_cells} cells but the model {len(cells)}; "
                "rebuild it with `geovit index` for this checkpoint"
            )
        self.gallery, self.k, self.m = gallery, int(k), int(m)

    def locate(self, outputs: Outputs) -> LatLon:
        probs = np.asarray(outputs["probs"])
        allowed = topk_indices(probs, self.k)
        ids = self.gallery.nearest(outputs["embedding"], allowed, self.m)  # (B,m), -1 = none
        found = ids >= 0
        xyz = latlon_to_xyz(self.gallery.lat[ids], self.gallery.lon[ids])
        lat, lon = xyz_to_latlon((xyz * found[..., None]).sum(axis=1))
        top = allowed[:, 0]
        none = ~found.any(axis=1)
        lat[none], lon[none] = (
            self.cells.centroid_lat[top[none]],
            self.cells.centroid_lon[top[none]],
        )
        return lat, lon


def make_point(name: str, cells: CellPartition, gallery: Gallery | None = None) -> PointEstimator:
    """The registered estimator ``name`` for these cells (and gallery, for ``retrieval``)."""
    if name not in POINTS:
        raise GeovitError(f"--point {name!r} is not one of {', '.join(POINTS)}")
    if gallery is not None and not POINTS[name].uses_gallery:
        raise GeovitError(f"--point {name} uses no --index; drop it or choose --point retrieval")
    return POINTS[name](cells, gallery)


def describe(name: str) -> str:
    """The estimator's "predicted point = ..." phrase (the name itself when unknown)."""
    return POINTS[name].description if name in POINTS else name
