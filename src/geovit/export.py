"""ONNX (and safetensors) export of a trained GeoViT; geovit.onnxmodel runs the exported file.

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
from pathlib import Path

import torch

from geovit.checkpoint import LoadedCheckpoint, contract_fields, load_checkpoint
from geovit.errors import GeovitError
from geovit.fileio import atomic_write
from geovit.modelfolder import write_folder
from geovit.onnxmodel import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, SIDECAR_FORMAT
from geovit.predictor import model_fingerprint


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
