"""An exported model.onnx run by onnxruntime, without torch: `geovit predict --onnx`.

The one .onnx file written by geovit.export carries its cells, input size, normalization and
temperature in its ``metadata_props`` (key ``geovit``), so nothing else is needed at inference.
OnnxPredictor preprocesses in NumPy/PIL (geovit.data.pixels, bit-identical to the torch eval
transform) and decodes with the shared PredictorBase, so its probabilities equal the torch
Predictor's; importing this module imports neither torch nor timm. Evaluation, which streams a
split through a torch DataLoader, asks for ``transform`` and gets the torch one then.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from geovit.cells import CellPartition
from geovit.contract import check_values
from geovit.data.pixels import eval_array, load_rgb
from geovit.errors import GeovitError
from geovit.points import DEFAULT_POINT
from geovit.prediction import ImageInput, PredictorBase

SIDECAR_FORMAT = "geovit-onnx/1"
METADATA_KEY = "geovit"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"  # always the first output; then the head's others and "embedding"


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """Where exports before the embedded metadata put the sidecar: ``model.onnx.json``."""
    return Path(f"{os.fspath(onnx_path)}.json")


def read_sidecar(onnx_path: str | os.PathLike, metadata: dict[str, str]) -> dict[str, Any]:
    """The sidecar embedded in an exported model's ``metadata`` (onnxruntime's
    custom_metadata_map), or a separate ``model.onnx.json`` of an older export, checked for
    the values inference needs."""
    text = metadata.get(METADATA_KEY)
    source = f"{onnx_path} metadata"
    if text is None:
        path = sidecar_path(onnx_path)
        if not path.is_file():
            raise GeovitError(
                f"{onnx_path} has no geovit metadata (cells and preprocessing): it was not "
                "written by `geovit export`; re-run `geovit export`"
            )
        text, source = path.read_text(encoding="utf-8", errors="replace"), str(path)
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise GeovitError(f"{source} is not valid JSON ({exc}); re-run `geovit export`") from exc
    missing = [
        k
        for k in ("image_size", "mean", "std", "temperature", "cells")
        if not isinstance(meta, dict) or k not in meta
    ]
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT or missing:
        raise GeovitError(f"{source} is not a geovit ONNX sidecar ({SIDECAR_FORMAT}); re-export")
    check_values(meta, source)
    return meta


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in the logits' precision (float32, as torch computes it)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in the logits' precision (float32, as torch.softmax computes it)."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class OnnxPredictor(PredictorBase):
    """A predictor whose model is an exported .onnx file run by onnxruntime.

    Same preprocess / infer / predict / decode API as the torch Predictor, on NumPy arrays, so
    the evaluation, the server and the CLI take either. Every exported output is available by
    name (the hybrid head's "offset", the retrieval "embedding"); test-time crops are not.
    """

    device = "cpu"

    def __init__(
        self,
        session: Any,
        cells: CellPartition,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: int,
        temperature: float = 1.0,
        batch_size: int = 32,
        exported_fingerprint: str | None = None,
    ) -> None:
        super().__init__(cells, mean, std, image_size, temperature, batch_size)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        # the first output is the logits whatever its name; the others keep theirs
        self.output_names = [o.name for o in session.get_outputs()]
        self.exported_fingerprint = exported_fingerprint
        self.configure()

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        batch_size: int = 32,
    ) -> OnnxPredictor:
        """Open ``model.onnx`` (its sidecar embedded, or an older export's ``model.onnx.json``).
        ``threads`` caps onnxruntime's intra-op threads (default: all cores)."""
        import onnxruntime as ort

        if not Path(path).is_file():
            raise GeovitError(f"ONNX model {path} does not exist; create it with `geovit export`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(os.fspath(path), options, providers=list(providers))
        except Exception as exc:
            raise GeovitError(
                f"onnxruntime cannot load {path} ({type(exc).__name__}); re-run `geovit export`"
            ) from exc
        meta = read_sidecar(path, session.get_modelmeta().custom_metadata_map)
        cells = CellPartition.from_frame(pd.DataFrame(meta["cells"]))
        shape, logits = session.get_inputs()[0].shape, session.get_outputs()[0].shape
        size = int(meta["image_size"])
        if list(shape[1:]) != [3, size, size] or logits[1:] != [len(cells)]:
            raise GeovitError(
                f"{path} maps input {shape} to logits {logits} but its metadata says "
                f"{size}px images and {len(cells)} cells: re-run `geovit export`"
            )
        return cls(
            session,
            cells,
            meta["mean"],
            meta["std"],
            size,
            temperature=float(meta["temperature"]),
            batch_size=batch_size,
            exported_fingerprint=meta.get("fingerprint"),
        )

    def configure(
        self,
        point: str = DEFAULT_POINT,
        index: str | os.PathLike | None = None,
        tta: int = 1,
    ) -> Self:
        """PredictorBase.configure; test-time crops need the torch Predictor."""
        if int(tta) != 1:
            raise GeovitError(
                f"--tta {tta} needs the torch predictor: pass --checkpoint instead of --onnx, "
                "or use --tta 1"
            )
        return super().configure(point, index, tta)

    def fingerprint(self) -> str:
        """The exported model's weight fingerprint, recorded by `geovit export`."""
        if not self.exported_fingerprint:
            raise GeovitError(
                "this ONNX model records no weight fingerprint (exported by an older geovit), "
                "so no gallery can be checked against it; re-run `geovit export`"
            )
        return str(self.exported_fingerprint)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: Any = None) -> OnnxPredictor:
        """For this class the "checkpoint" is the exported .onnx file (CPU only)."""
        return cls.from_onnx(path)

    @property
    def transform(self) -> Callable:
        """The torch eval transform, for callers that stream images through a torch
        DataLoader (evaluation): they have imported torch already."""
        from geovit.data.images import build_transform

        return build_transform(self.image_size, self.mean, self.std, train=False)

    input_transform = transform  # one crop: configure refuses test-time crops

    def preprocess(self, img: ImageInput) -> np.ndarray:
        """A PIL image, a path (or "ARCHIVE.zip::member") or encoded bytes -> float32 (3,S,S)."""
        return eval_array(load_rgb(img), self.image_size, self.mean, self.std)

    def stack(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Preprocessed images -> one batch (B,3,S,S)."""
        return np.stack(list(inputs))

    def logits(self, x: Any, scaled: bool = True) -> np.ndarray:
        """Logits (B,K) float32 of a batch (a NumPy array or a CPU tensor), divided by the
        temperature unless ``scaled=False``."""
        out = self.outputs(x, ())[OUTPUT_NAME]
        return out / np.float32(self.temperature) if scaled else out

    def outputs(self, x: Any, need: Iterable[str]) -> dict[str, np.ndarray]:
        """The logits and the exported outputs named in ``need``, float32, of a batch."""
        names = [self.output_names[0], *need]
        missing = sorted(set(need) - set(self.output_names[1:]))
        if missing:
            raise GeovitError(
                f"this model has no {' or '.join(missing)} output, which the chosen --point "
                "needs; export a model with that head, or choose another --point"
            )
        feed = {self.input_name: np.ascontiguousarray(np.asarray(x, dtype=np.float32))}
        arrays = self.session.run(names, feed)
        return {
            name: a.astype(np.float32, copy=False)
            for name, a in zip([OUTPUT_NAME, *need], arrays, strict=True)
        }

    def infer(self, x: Any, need: frozenset[str] | set[str] = frozenset()) -> dict[str, np.ndarray]:
        """PredictorBase.infer in NumPy on one crop per image (B,3,S,S)."""
        out = self.outputs(x, sorted(need))
        z = out.pop(OUTPUT_NAME) / np.float32(self.temperature)
        out.update(probs=softmax(z), log_probs=log_softmax(z))
        if "embedding" in out:
            e = out["embedding"]
            out["embedding"] = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        return out


def load_predictor(path: str | os.PathLike, **options: Any) -> PredictorBase:
    """An OnnxPredictor for an exported ``.onnx`` file, else the torch Predictor of a checkpoint
    (torch is imported only then); ``options`` (point, index, tta) go to
    :meth:`PredictorBase.configure`."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxPredictor.from_onnx(path).configure(**options)
    from geovit.predictor import Predictor

    return Predictor.from_checkpoint(path).configure(**options)
