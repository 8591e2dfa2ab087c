"""Where was this photo taken? A checkpoint wrapped for inference on anyone's images.

    model = geovit.load("best.ckpt")
    result = model.predict("street.jpg")     # PIL image, path or bytes -> one Prediction
    result.best_lat, result.best_lon, result.tokens[0], result.probs[0]
    results = model.predict_many(["a.jpg", "b.jpg"])   # -> a list, one Prediction per image

Probabilities are softmax(logits / T) with the checkpoint's fitted temperature (1.0 until
``geovit calibrate``). The best guess is the top cell's centroid: the spherical mean of that
cell's training photos, which is where the model's evaluation distances are measured from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from geovit.cells import CellPartition
from geovit.data.images import build_transform, load_image
from geovit.prediction import (
    IMAGE_SUFFIXES,
    ImageInput,
    Prediction,
    PredictorBase,
    expand_images,
    predict_files,
)

if TYPE_CHECKING:
    from geovit.checkpoint import LoadedCheckpoint

# Prediction and the image helpers live in the torch-free geovit.prediction (shared with the
# ONNX predictor); importing them from here keeps working.
__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInput",
    "Prediction",
    "Predictor",
    "expand_images",
    "load",
    "predict_files",
]


class Predictor(PredictorBase):
    """A GeoViT and its cells, ready for images: eval transform, temperature, top-k decoding."""

    def __init__(
        self,
        model: torch.nn.Module,
        cells: CellPartition,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        temperature: float = 1.0,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ) -> None:
        super().__init__(cells, mean, std, image_size, temperature, batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.transform = build_transform(self.image_size, self.mean, self.std, train=False)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device | None = None
    ) -> Predictor:
        """Load a geovit checkpoint (or a Lightning .ckpt written by geovit train)."""
        from geovit.checkpoint import load_checkpoint

        return cls.from_loaded(load_checkpoint(path), device=device)

    @classmethod
    def from_loaded(
        cls, ckpt: LoadedCheckpoint, device: str | torch.device | None = None
    ) -> Predictor:
        """A Predictor for a checkpoint already opened with geovit.checkpoint.load_checkpoint."""
        return cls(
            ckpt.model,
            ckpt.cells,
            ckpt.mean,
            ckpt.std,
            ckpt.image_size,
            temperature=ckpt.temperature,
            device=device,
        )

    def preprocess(self, img: ImageInput) -> torch.Tensor:
        """A PIL image, a path (or "ARCHIVE.zip::member") or encoded bytes -> float (3,S,S)."""
        return self.transform(load_image(img))

    def logits(self, x: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        """Logits (B,K) in float32 on the CPU, divided by the temperature unless ``scaled=False``
        (calibration fits a new temperature on the raw logits)."""
        with torch.inference_mode():
            out = self.model(x.to(self.device, non_blocking=True)).float().cpu()
        return out / self.temperature if scaled else out

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Cell probabilities (B,K) = softmax(logits / T)."""
        return torch.softmax(self.logits(x), dim=-1)

    def stack(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Preprocessed images -> one batch (B,3,S,S)."""
        return torch.stack(list(inputs))


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> Predictor:
    """``geovit.load(CKPT)``: a Predictor for a checkpoint."""
    return Predictor.from_checkpoint(path, device=device)
