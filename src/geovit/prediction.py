"""What a prediction is, whichever engine computes the logits: torch (geovit.predictor) or
onnxruntime (geovit.onnxmodel).

Everything here is torch-free, so `geovit predict --onnx` never imports torch or timm:
`Prediction`; `PredictorBase`, what both predictors share around the model call (inference
options: point estimator, gallery, test-time crops; batching; top-k decoding); and turning
command-line arguments (files, folders, globs, zips) into image references.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, overload

import numpy as np

from geovit.cells import CellPartition
from geovit.data.pixels import ImageSource
from geovit.data.refs import IMAGE_SUFFIXES, ZIP_SEP, open_zip, split_ref
from geovit.errors import GeovitError
from geovit.gallery import Gallery
from geovit.metrics import topk_indices
from geovit.points import DEFAULT_POINT, PointEstimator, make_point

ImageInput = ImageSource


@dataclass
class Prediction:
    """The top-k cells for one image, best first, and one best-guess coordinate."""

    indices: np.ndarray
    probs: np.ndarray
    tokens: list[str]
    lat: np.ndarray
    lon: np.ndarray
    names: list[str]
    levels: list[int]
    best_lat: float
    best_lon: float
    all_probs: np.ndarray | None = field(default=None, repr=False)
    point: str = DEFAULT_POINT  # the estimator of the best guess (geovit.points)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: best guess plus one entry per top-k cell; the one shape of a prediction
        (CLI --format json, the server's /predict, geovit.geojson's properties)."""
        cells = zip(self.indices, self.tokens, self.levels, self.names, self.lat, self.lon,
                    self.probs, strict=True)  # fmt: skip
        return {
            "best_guess": {"lat": float(self.best_lat), "lon": float(self.best_lon)},
            "top_k": [
                {
                    "rank": r + 1,
                    "index": int(i),
                    "token": str(t),
                    "level": int(lv),
                    "name": str(n),
                    "lat": float(la),
                    "lon": float(lo),
                    "probability": float(p),
                }
                for r, (i, t, lv, n, la, lo, p) in enumerate(cells)
            ],
        }


class PredictorBase:
    """Cells, preprocessing constants and temperature of a model, and everything a predictor
    does around the model call: the inference options, the point estimate, top-k decoding,
    batching, one-image and many-image results.

    Subclasses say how to run the model: ``preprocess`` (one image -> model input),
    ``infer`` (a batch -> "probs", "log_probs" and the requested outputs, any array type NumPy
    can read), ``stack`` (inputs -> a batch) and ``fingerprint`` (the weights' identity).
    """

    def __init__(
        self,
        cells: CellPartition,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        temperature: float = 1.0,
        batch_size: int = 32,
    ) -> None:
        if temperature <= 0:
            raise GeovitError(f"temperature {temperature} must be > 0; re-run geovit calibrate")
        self.cells = cells
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.image_size = int(image_size)
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)

    def configure(
        self,
        point: str = DEFAULT_POINT,
        index: str | os.PathLike | None = None,
        tta: int = 1,
    ) -> Self:
        """Choose how predictions are made (returns self): the best guess's ``point`` estimator
        (geovit.points; ``retrieval`` needs the gallery ``index`` built for this model by
        ``geovit index``) and ``tta``, the number of test-time crops whose softmax is averaged.
        A model lacking an output the estimator needs fails here, in one line."""
        gallery = None if index is None else Gallery.load(index, self.fingerprint())
        estimator = make_point(point, self.cells, gallery)
        self.tta = int(tta)
        if estimator.needs:
            size = self.image_size
            self.infer(np.zeros((1, 3, size, size), np.float32), estimator.needs)
        self.point: PointEstimator = estimator
        return self

    def fingerprint(self) -> str:
        """The model's identity (a hash of its weights); a retrieval gallery records it to
        refuse another model's embeddings."""
        raise NotImplementedError

    def preprocess(self, img: ImageInput) -> Any:
        """One image -> the model's input (3,S,S), or (tta,3,S,S) with test-time crops."""
        raise NotImplementedError

    def infer(self, x: Any, need: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
        """Outputs (float32) of images (B,3,S,S) or of crops of them (B,N,3,S,S): "probs"
        (B,K) = softmax(logits / T), for crops the mean of the per-crop softmaxes, and
        "log_probs" its log, plus the model outputs named in ``need`` ("embedding",
        L2-normalized; "offset"), averaged over the crops."""
        raise NotImplementedError

    def stack(self, inputs: Sequence[Any]) -> Any:
        """Preprocessed images -> one batch (B,3,S,S) (or (B,N,3,S,S) with crops)."""
        raise NotImplementedError

    def predict_proba(self, x: Any) -> Any:
        """Cell probabilities (B,K) = softmax(logits / T) (crops (B,N,3,S,S): their mean)."""
        return self.infer(x)["probs"]

    def estimate(self, x: Any) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Probabilities (B,K) and the point estimator's (lat, lon) of a batch."""
        out = {k: np.asarray(v) for k, v in self.infer(x, self.point.needs).items()}
        return out["probs"], self.point.locate(out)

    def decode(
        self,
        probs: np.ndarray,
        top_k: int = 5,
        keep_all: bool = False,
        best: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[Prediction]:
        """Top-k cells of each row of a probability matrix (B,K); the best guess is ``best``
        (lat, lon) per row, or the top cell's centroid."""
        probs = np.asarray(probs, dtype=np.float64)
        top = topk_indices(probs, top_k)
        tokens = self.cells.tokens
        out = []
        for i, (row, idx) in enumerate(zip(probs, top, strict=True)):
            lat, lon = self.cells.centroid_lat[idx], self.cells.centroid_lon[idx]
            best_lat, best_lon = (lat[0], lon[0]) if best is None else (best[0][i], best[1][i])
            out.append(
                Prediction(
                    indices=idx,
                    probs=row[idx],
                    tokens=[str(t) for t in tokens[idx]],
                    lat=lat,
                    lon=lon,
                    names=[str(n) for n in self.cells.names[idx]],
                    levels=[int(v) for v in self.cells.levels[idx]],
                    best_lat=float(best_lat),
                    best_lon=float(best_lon),
                    all_probs=row if keep_all else None,
                    point=self.point.name if best is not None else DEFAULT_POINT,
                )
            )
        return out

    def predict_tensors(self, x: Any, top_k: int = 5) -> list[Prediction]:
        """Predictions for preprocessed images (B,3,S,S) (or their crops (B,N,3,S,S)), in
        batches of ``batch_size``."""
        out: list[Prediction] = []
        for start in range(0, len(x), self.batch_size):
            probs, best = self.estimate(x[start : start + self.batch_size])
            out += self.decode(probs, top_k, best=best)
        return out

    @overload
    def predict(self, img: ImageInput, top_k: int = 5) -> Prediction: ...

    @overload
    def predict(self, img: Sequence[ImageInput], top_k: int = 5) -> list[Prediction]: ...

    def predict(
        self, img: ImageInput | Sequence[ImageInput], top_k: int = 5
    ) -> Prediction | list[Prediction]:
        """Top-k cells and best guess of one image (with ``all_probs``, the whole softmax).

        A list or tuple of images is :meth:`predict_many` (a list of results, one per image), so
        the result's type follows the argument's. An unreadable image raises GeovitError naming
        it; see :func:`predict_files` to predict the readable ones of many files and report the
        others.
        """
        if isinstance(img, list | tuple):
            return self.predict_many(img, top_k)
        probs, best = self.estimate(self.stack([self.preprocess(img)]))
        return self.decode(probs, top_k, keep_all=True, best=best)[0]

    def predict_many(self, images: Sequence[ImageInput], top_k: int = 5) -> list[Prediction]:
        """One Prediction per image, in order (always a list, empty for no images)."""
        if not images:
            return []
        return self.predict_tensors(self.stack([self.preprocess(i) for i in images]), top_k)


def _zip_images(ref: str) -> list[str]:
    """Every image inside a zip (OSV-5M's 00.zip, ...) as "ARCHIVE.zip::member" references, or
    just `ref` when it names one member; GeovitError when the archive or member is missing."""
    archive, member = split_ref(ref)
    names = open_zip(archive).namelist()
    if member is not None:
        if member not in names:
            raise GeovitError(f"no member {member!r} in {archive}")
        return [ref]
    found = [f"{archive}{ZIP_SEP}{n}" for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise GeovitError(f"archive has no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def expand_images(args: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (recursively, image suffixes), glob patterns, zip archives (every image
    inside) and "ARCHIVE.zip::member" references -> image references in order.

    Returns (paths, problems): an argument matching nothing is a (arg, reason) problem, not an
    exception, so the other images can still be predicted.
    """
    paths: dict[str, None] = {}  # insertion-ordered set: O(1) de-duplication
    problems: list[tuple[str, str]] = []
    for arg in args:
        p = Path(arg).expanduser()
        if split_ref(str(p))[1] is not None or (p.is_file() and p.suffix.lower() == ".zip"):
            try:
                found = _zip_images(str(p))
            except GeovitError as exc:
                found = []
                problems.append((arg, str(exc)))
        elif p.is_dir():
            found = sorted(
                str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                problems.append((arg, f"folder has no images ({', '.join(IMAGE_SUFFIXES)})"))
        elif p.is_file():
            found = [str(p)]
        elif glob.has_magic(arg):
            found = sorted(f for f in glob.glob(str(p), recursive=True) if os.path.isfile(f))
            if not found:
                problems.append((arg, "pattern matches no files"))
        else:
            found = []
            problems.append((arg, "no such file or folder"))
        paths.update(dict.fromkeys(found))
    return list(paths), problems


def predict_files(
    predictor: PredictorBase, paths: Sequence[str], top_k: int = 5
) -> list[tuple[str, Prediction | str]]:
    """(path, Prediction) for every readable image and (path, error message) for the others.

    Images are decoded and predicted ``predictor.batch_size`` at a time, so memory stays flat.
    """
    results: list[tuple[str, Prediction | str]] = []
    for start in range(0, len(paths), predictor.batch_size):
        chunk = paths[start : start + predictor.batch_size]
        inputs: dict[int, Any] = {}
        errors: dict[int, str] = {}
        for i, path in enumerate(chunk):
            try:
                inputs[i] = predictor.preprocess(path)
            except GeovitError as exc:
                errors[i] = str(exc)
        batch = predictor.stack(list(inputs.values())) if inputs else None
        preds = predictor.predict_tensors(batch, top_k) if inputs else []
        by_index = dict(zip(inputs, preds, strict=True))
        results += [(p, by_index[i] if i in by_index else errors[i]) for i, p in enumerate(chunk)]
    return results
