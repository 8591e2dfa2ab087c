"""ONNX export of a trained GeoViT, and a Predictor that runs the exported file with onnxruntime.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is used because the legacy
TorchScript exporter rejects the CNN-map -> ViT-grid adaptive pooling (7 -> 14 is not a
divisible downsampling). The batch dimension is dynamic. Everything else a deployment needs
(cells, input size, normalization, temperature) is a JSON "sidecar" embedded in the model's own
``metadata_props`` (key ``geovit``), so the one .onnx file, written atomically, replaces the
checkpoint at inference: a model can never be paired with another export's cells.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from geovit.cells import CellPartition
from geovit.checkpoint import LoadedCheckpoint, check_values, contract_fields, load_checkpoint
from geovit.errors import GeovitError
from geovit.fileio import atomic_write
from geovit.modelfolder import write_folder
from geovit.predictor import Predictor, model_fingerprint

SIDECAR_FORMAT = "geovit-onnx/1"
METADATA_KEY = "geovit"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"  # always the first output; then "embedding" and the head's others


class _Outputs(torch.nn.Module):
    """The model's tensor outputs as a tuple, logits first: what ONNX exports (named by
    ``names``), so the hybrid head's offsets and the retrieval embedding leave the file too."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = (OUTPUT_NAME, *(n for n in model.head.outputs if n != OUTPUT_NAME),
                      "embedding")  # fmt: skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.forward_outputs(x)
        return tuple(out[name] for name in self.names)


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """Where exports before the embedded metadata put the sidecar: ``model.onnx.json``."""
    return Path(f"{os.fspath(onnx_path)}.json")


def export_onnx(
    checkpoint: str | os.PathLike | LoadedCheckpoint,
    out: str | os.PathLike,
    *,
    opset: int | None = None,
) -> Path:
    """Export a checkpoint's model to ONNX: images (B,3,S,S) -> logits (B,K) (first output),
    the head's other outputs (e.g. ``offset`` (B,K,2)) and ``embedding`` (B,D).

    Writes ``out``, sidecar embedded, atomically (temp file in the same folder, then rename) and
    returns ``out``. The logits are raw: consumers divide by the sidecar's temperature.
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise GeovitError(f"--out {out} must end in .onnx")
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint)
    model = ckpt.model.eval()
    size = int(ckpt.image_size)
    # Batch 2, not 1: the exporter would specialize a size-1 dimension to a constant.
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    outputs = _Outputs(model).eval()
    try:
        program = torch.onnx.export(
            outputs,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(outputs.names),
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
    except Exception as exc:
        raise GeovitError(
            f"ONNX export of {ckpt.config.backbones} ({ckpt.config.arch}) failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "try another --opset or report the model config"
        ) from exc
    # The checkpoint contract itself (all but the weights, which are the .onnx file).
    sidecar = {
        "format": SIDECAR_FORMAT,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "outputs": list(outputs.names),
        **contract_fields(
            ckpt.model,
            ckpt.cells,
            extra_cells=ckpt.extra_cells,
            train=ckpt.train,
            temperature=ckpt.temperature,
        ),
        "fingerprint": model_fingerprint(ckpt.model),  # a retrieval gallery's model check
    }
    program.model.metadata_props[METADATA_KEY] = json.dumps(sidecar)
    atomic_write(out, lambda tmp: program.save(tmp, external_data=False))
    return out


def export_folder(
    checkpoint: str | os.PathLike | LoadedCheckpoint,
    out: str | os.PathLike,
    *,
    card: str | None = None,
) -> Path:
    """A checkpoint as a model folder (geovit.modelfolder): safetensors weights, config.json,
    cells.parquet and, given ``card``, README.md. Loadable by every command, no pickle."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GeovitError(f"--out {out} is a file: the safetensors export writes a folder")
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint)
    fields = contract_fields(
        ckpt.model,
        ckpt.cells,
        extra_cells=ckpt.extra_cells,
        train=ckpt.train,
        temperature=ckpt.temperature,
    )
    return write_folder(out, ckpt.model.state_dict(), fields, card=card)


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


class _OrtModule(torch.nn.Module):
    """An onnxruntime session behind the module call Predictor makes: float batch -> logits."""

    def __init__(self, session: Any, input_name: str) -> None:
        super().__init__()
        self.session = session
        self.input_name = input_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_outputs(x)[OUTPUT_NAME]

    def forward_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every exported output by name (GeoViT.forward_outputs' names), the first as logits."""
        feed = {self.input_name: x.detach().float().cpu().contiguous().numpy()}
        names = [OUTPUT_NAME] + [o.name for o in self.session.get_outputs()[1:]]
        return dict(zip(names, map(torch.from_numpy, self.session.run(None, feed)), strict=True))


class OnnxPredictor(Predictor):
    """A Predictor whose model is an exported .onnx file run by onnxruntime.

    Same preprocess / predict_proba / predict / decode API as the torch Predictor (it inherits
    them), so the evaluation, the server and the CLI take either.
    """

    exported_fingerprint: str | None = None

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        batch_size: int = 32,
    ) -> OnnxPredictor:
        """Open ``model.onnx`` and its ``model.onnx.json`` sidecar. ``threads`` caps
        onnxruntime's intra-op threads (default: all cores)."""
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
        predictor = cls(
            _OrtModule(session, session.get_inputs()[0].name),
            cells,
            meta["mean"],
            meta["std"],
            size,
            temperature=float(meta["temperature"]),
            device="cpu",
            batch_size=batch_size,
        )
        predictor.exported_fingerprint = meta.get("fingerprint")
        return predictor

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


def load_predictor(path: str | os.PathLike, **options: Any) -> Predictor:
    """A Predictor for a checkpoint, or an OnnxPredictor for an exported ``.onnx`` file;
    ``options`` (point, index, tta) go to :meth:`Predictor.configure`."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxPredictor.from_onnx(path).configure(**options)
    return Predictor.from_checkpoint(path).configure(**options)
