"""ONNX export of a trained GeoViT, and a Predictor that runs the exported file with onnxruntime.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is used because the legacy
TorchScript exporter rejects the CNN-map -> ViT-grid adaptive pooling (7 -> 14 is not a
divisible downsampling). The batch dimension is dynamic. Everything else a deployment needs
(cells, input size, normalization, temperature) goes into a JSON sidecar next to the model,
``model.onnx.json``, so the .onnx file plus its sidecar replace the checkpoint at inference.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from geovit import __version__
from geovit.cells import CellPartition
from geovit.checkpoint import LoadedCheckpoint, cells_to_dict, contract_fields, load_checkpoint
from geovit.errors import GeovitError
from geovit.fileio import atomic_write, write_text
from geovit.modelfolder import write_folder
from geovit.predictor import Predictor

SIDECAR_FORMAT = "geovit-onnx/1"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """Where the JSON sidecar of an .onnx file lives: ``model.onnx`` -> ``model.onnx.json``."""
    return Path(f"{os.fspath(onnx_path)}.json")


def export_onnx(
    checkpoint: str | os.PathLike | LoadedCheckpoint,
    out: str | os.PathLike,
    *,
    opset: int | None = None,
) -> Path:
    """Export a checkpoint's classifier (images (B,3,S,S) -> logits (B,K)) to ONNX.

    Writes ``out`` and its sidecar atomically (temp file in the same folder, then rename) and
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
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
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
    atomic_write(out, lambda tmp: program.save(tmp, external_data=False))
    sidecar = {
        "format": SIDECAR_FORMAT,
        "geovit_version": __version__,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "image_size": size,
        "mean": list(ckpt.mean),
        "std": list(ckpt.std),
        "temperature": float(ckpt.temperature),
        "model_config": ckpt.config.to_dict(),
        "cells": cells_to_dict(ckpt.cells),
    }
    write_text(sidecar_path(out), json.dumps(sidecar))
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
    fields = contract_fields(ckpt.model, ckpt.cells, train=ckpt.train, temperature=ckpt.temperature)
    return write_folder(out, ckpt.model.state_dict(), fields, card=card)


def read_sidecar(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of an exported model, checked for the keys inference needs."""
    path = sidecar_path(onnx_path)
    if not Path(onnx_path).is_file():
        raise GeovitError(f"ONNX model {onnx_path} does not exist; create it with `geovit export`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise GeovitError(
            f"{onnx_path} has no sidecar {path.name} (cells and preprocessing); keep the two "
            "files together or re-run `geovit export`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise GeovitError(
            f"sidecar {path} is not valid JSON ({exc}); re-run `geovit export`"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise GeovitError(f"{path} is not a geovit ONNX sidecar ({SIDECAR_FORMAT}); re-export")
    return meta


class _OrtModule(torch.nn.Module):
    """An onnxruntime session behind the module call Predictor makes: float batch -> logits."""

    def __init__(self, session: Any, input_name: str) -> None:
        super().__init__()
        self.session = session
        self.input_name = input_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().float().cpu().contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


class OnnxPredictor(Predictor):
    """A Predictor whose model is an exported .onnx file run by onnxruntime.

    Same preprocess / predict_proba / predict / decode API as the torch Predictor (it inherits
    them), so the evaluation, the server and the CLI take either.
    """

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

        meta = read_sidecar(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(os.fspath(path), options, providers=list(providers))
        except Exception as exc:
            raise GeovitError(
                f"onnxruntime cannot load {path} ({type(exc).__name__}); re-run `geovit export`"
            ) from exc
        shape = session.get_inputs()[0].shape
        size = int(meta["image_size"])
        if list(shape[1:]) != [3, size, size]:
            raise GeovitError(
                f"{path} takes input {shape} but its sidecar says {size}px images; the two files "
                "come from different exports: re-run `geovit export`"
            )
        return cls(
            _OrtModule(session, session.get_inputs()[0].name),
            CellPartition.from_frame(pd.DataFrame(meta["cells"])),
            meta["mean"],
            meta["std"],
            size,
            temperature=float(meta["temperature"]),
            device="cpu",
            batch_size=batch_size,
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: Any = None) -> OnnxPredictor:
        """For this class the "checkpoint" is the exported .onnx file (CPU only)."""
        return cls.from_onnx(path)


def load_predictor(path: str | os.PathLike) -> Predictor:
    """A Predictor for a checkpoint, or an OnnxPredictor for an exported ``.onnx`` file."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxPredictor.from_onnx(path)
    return Predictor.from_checkpoint(path)
