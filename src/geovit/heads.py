"""Heads: what the model computes from its pooled image features, chosen by name.

A head turns the pooled features (B, D) (after dropout) into named outputs; ``"logits"`` (B, K)
over the main cell partition is always one of them, and is what every consumer of a classifier
(calibration, explanation, maps, ONNX) reads. A head with more outputs also says how they are
trained (:meth:`Head.aux_loss`), so a new head is one class registered here: model, training,
checkpoints, prediction and export pick it up by name (``ModelConfig.head``).

Several partitions at once (PlaNet / TIB GeoEstimation's hierarchy): with ``extra_classes``
every head also classifies over coarser partitions, and its ``"logits"`` become the hierarchy's
log-probabilities, log p_fine(c) + sum_i log p_coarse_i(parent_i(c)), so softmax(logits) is the
product of a fine cell's probability and its coarse parents', renormalized over the fine cells.
The parent maps are buffers in the state dict: a checkpoint predicts without its coarse cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from geovit.errors import GeovitError

HEADS: dict[str, type[Head]] = {}
OFFSET_LOSSES = ("l1", "l2")


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make a head available by its ``name`` (``--head NAME``)."""
    HEADS[cls.name] = cls
    return cls


def create_head(name: str, width: int, num_classes: int, extra_classes: Sequence[int] = ()) -> Head:
    if name not in HEADS:
        raise GeovitError(f"unknown head {name!r}: choose one of {', '.join(HEADS)}")
    return HEADS[name](width, num_classes, extra_classes)


class Head(nn.Linear):
    """The cell classifier (its Linear weights are ``head.weight``/``head.bias``) plus, with
    ``extra_classes``, one classifier per coarser partition and the fine -> coarse parent maps."""

    name: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]] = ("logits",)

    def __init__(self, width: int, num_classes: int, extra_classes: Sequence[int] = ()) -> None:
        super().__init__(width, num_classes)
        self.extra = nn.ModuleList(nn.Linear(width, int(k)) for k in extra_classes)
        for i in range(len(self.extra)):
            self.register_buffer(f"parent_{i}", torch.zeros(num_classes, dtype=torch.int64))

    def set_parents(self, parents: Sequence[torch.Tensor]) -> None:
        """Fine class -> coarse class index maps, one per extra partition (cells.parents_in)."""
        if len(parents) != len(self.extra):
            raise GeovitError(f"{len(parents)} parent maps for {len(self.extra)} partitions")
        for i, p in enumerate(parents):
            getattr(self, f"parent_{i}").copy_(torch.as_tensor(p, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) over the main partition (a hierarchy's combined log-probabilities)."""
        return self.forward_outputs(x)["logits"]

    def forward_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``"logits"`` (B, K) for inference and ``"partition_logits"`` (the raw logits of each
        partition, main first) for training, plus this head's other outputs."""
        fine = F.linear(x, self.weight, self.bias)
        per_partition = [fine, *(head(x) for head in self.extra)]
        logits = fine
        if self.extra:
            logits = F.log_softmax(fine.float(), dim=-1)
            for i, coarse in enumerate(per_partition[1:]):
                logits = (
                    logits + F.log_softmax(coarse.float(), dim=-1)[:, getattr(self, f"parent_{i}")]
                )
        return {"logits": logits, "partition_logits": per_partition}

    def aux_loss(
        self, out: dict, labels: torch.Tensor, offsets: torch.Tensor | None, kind: str
    ) -> torch.Tensor | None:
        """The loss of this head's extra outputs (None: it has none)."""
        return None


@register_head
class LinearHead(Head):
    """The design's head: a linear classifier over the cells."""

    name = "linear"


@register_head
class HybridHead(Head):
    """Cells + offsets (OpenStreetView-5M's hybrid head): besides the logits, for every cell k a
    regression of the photo's (east, north) offset from cell k's centroid, in cell k's tangent
    plane and units of its size (CellPartition.offsets). Trained on the true cell's offset only;
    a prediction is the top cell's centroid moved by its predicted offset (CellPartition.points_at).
    """

    name = "hybrid"
    outputs = ("logits", "offset")

    def __init__(self, width: int, num_classes: int, extra_classes: Sequence[int] = ()) -> None:
        super().__init__(width, num_classes, extra_classes)
        self.offset = nn.Linear(width, 2 * num_classes)
        nn.init.zeros_(self.offset.weight)  # start at the centroid: the classifier's answer
        nn.init.zeros_(self.offset.bias)

    def forward_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        out = super().forward_outputs(x)
        out["offset"] = self.offset(x).unflatten(-1, (self.out_features, 2))
        return out

    def aux_loss(
        self, out: dict, labels: torch.Tensor, offsets: torch.Tensor | None, kind: str
    ) -> torch.Tensor | None:
        """L1 or L2 between the true cell's predicted offset and its target, over in-cell rows."""
        if offsets is None:
            raise GeovitError("the hybrid head needs offset targets (CellPartition.offsets)")
        inside = labels >= 0
        if not inside.any():
            return out["offset"].sum() * 0.0  # keeps the graph (DDP) with nothing to learn
        pred = out["offset"][inside, labels[inside]].float()
        target = offsets[inside].to(pred.dtype)
        if kind == "l1":
            return F.l1_loss(pred, target)
        if kind == "l2":
            return F.mse_loss(pred, target)
        raise GeovitError(f"unknown offset loss {kind!r}: choose one of {', '.join(OFFSET_LOSSES)}")
