"""`geovit push`: a checkpoint as a Hub model repo (safetensors folder + generated model card).

The folder is built by the same code as `geovit export --format safetensors` and its README.md
is geovit.card's model card (Hugging Face metadata, model-index with the run's own metrics), so
what is uploaded is exactly what `geovit.load("hf-hub:USER/NAME")` reads back.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geovit.card import DatasetInfo, model_card
from geovit.checkpoint import LoadedCheckpoint, load_checkpoint
from geovit.export import export_folder
from geovit.hub import upload_model_folder


def hub_folder(
    checkpoint: str | os.PathLike | LoadedCheckpoint,
    metrics: Mapping[str, Any],
    data: DatasetInfo,
    repo: str,
    out: str | os.PathLike,
) -> Path:
    """Write the folder `push` uploads: model.safetensors, config.json, cells.parquet, README.md."""
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint)
    return export_folder(ckpt, out, card=model_card(ckpt, metrics, data, hub_repo=repo))


def push(
    checkpoint: str | os.PathLike | LoadedCheckpoint,
    metrics: Mapping[str, Any],
    data: DatasetInfo,
    repo: str,
    *,
    private: bool = False,
) -> str:
    """Build the Hub folder in a temporary directory and upload it to ``repo``; the commit URL."""
    with tempfile.TemporaryDirectory(prefix="geovit-push-") as tmp:
        folder = hub_folder(checkpoint, metrics, data, repo, tmp)
        return upload_model_folder(folder, repo, private=private)
