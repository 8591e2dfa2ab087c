"""Where was this photo taken? A checkpoint wrapped for inference on anyone's images.

    model = geovit.load("best.ckpt")
    result = model.predict("street.jpg")     # PIL image, path or bytes -> one Prediction
    result.best_lat, result.best_lon, result.tokens[0], result.probs[0]
    results = model.predict_many(["a.jpg", "b.jpg"])   # -> a list, one Prediction per image

Probabilities are softmax(logits / T) with the checkpoint's fitted temperature (1.0 until
``geovit calibrate``), averaged over ``tta`` test-time crops. The best guess comes from the
predictor's point estimator (geovit.points; ``configure(point=...)``): by default the top
cell's centroid, the spherical mean of that cell's training photos.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import torch

from geovit.cells import CellPartition
from geovit.data.images import build_transform, load_image, tta_transform
from geovit.errors import GeovitError
from geovit.points import DEFAULT_POINT
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
    "model_fingerprint",
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
        self.configure()

    def configure(
        self,
        point: str = DEFAULT_POINT,
        index: str | os.PathLike | None = None,
        tta: int = 1,
    ) -> Self:
        """PredictorBase.configure, and the input transform of ``tta`` crops."""
        super().configure(point, index, tta)
        # `transform` stays one crop (explanations occlude one image); preprocess adds crops.
        self.input_transform = (
            self.transform
            if self.tta == 1
            else tta_transform(self.image_size, self.mean, self.std, self.tta)
        )
        return self

    def fingerprint(self) -> str:
        """SHA-256 of the model's weights (names, dtypes, shapes, bytes)."""
        return model_fingerprint(self.model)

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
        """A PIL image, a path (or "ARCHIVE.zip::member") or encoded bytes -> float (3,S,S),
        or (tta,3,S,S) with test-time crops."""
        return self.input_transform(load_image(img))

    def stack(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Preprocessed images -> one batch (B,3,S,S) (or (B,N,3,S,S) with crops)."""
        return torch.stack(list(inputs))

    def logits(self, x: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        """Logits (B,K) in float32 on the CPU, divided by the temperature unless ``scaled=False``
        (calibration fits a new temperature on the raw logits)."""
        with torch.inference_mode():
            out = self.model(x.to(self.device, non_blocking=True)).float().cpu()
        return out / self.temperature if scaled else out

    def infer(
        self, x: Any, need: frozenset[str] | set[str] = frozenset()
    ) -> dict[str, torch.Tensor]:
        """PredictorBase.infer as float32 CPU tensors (``x``: a tensor or a NumPy array)."""
        x = torch.as_tensor(x)
        crops = x.shape[1] if x.ndim == 5 else 1
        flat = x.flatten(0, 1) if x.ndim == 5 else x
        with torch.inference_mode():
            flat = flat.to(self.device, non_blocking=True)
            raw = self.model.forward_outputs(flat) if need else {"logits": self.model(flat)}
            missing = sorted(set(need) - set(raw))
            if missing:
                raise GeovitError(
                    f"this model has no {' or '.join(missing)} output, which the chosen --point "
                    "needs; train a model with that head, or choose another --point"
                )
            # (B,N,...): the crops of each image side by side, averaged below
            out = {k: raw[k].float().cpu().unflatten(0, (-1, crops)) for k in ("logits", *need)}
        z = out.pop("logits") / self.temperature
        if crops == 1:
            result = {
                "probs": torch.softmax(z[:, 0], -1),
                "log_probs": torch.log_softmax(z[:, 0], -1),
            }
        else:
            result = {
                "probs": torch.softmax(z, -1).mean(dim=1),
                "log_probs": torch.logsumexp(torch.log_softmax(z, -1), dim=1) - math.log(crops),
            }
        for name in need:
            result[name] = out[name].mean(dim=1)
        if "embedding" in result:
            result["embedding"] = torch.nn.functional.normalize(result["embedding"], dim=-1)
        return result


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 (hex, 16 digits) of a model's weights: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def load(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    point: str = DEFAULT_POINT,
    index: str | os.PathLike | None = None,
    tta: int = 1,
) -> Predictor:
    """``geovit.load(CKPT)``: a Predictor for a checkpoint (``point``, ``index``, ``tta``: see
    :meth:`PredictorBase.configure`)."""
    return Predictor.from_checkpoint(path, device=device).configure(point, index, tta)
