"""A model as a folder of plain files: model.safetensors, config.json, cells.parquet, README.md.

What `geovit export --format safetensors` writes and `geovit push` uploads to the Hugging Face
Hub. The weights are safetensors (no pickle: nothing runs when a stranger's model is opened) and
everything else is JSON or Parquet, so a user can inspect a model without ``torch.load`` at all.
``read_folder`` returns the same dict a checkpoint file holds, so a folder is a checkpoint too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from geovit.errors import GeovitError
from geovit.fileio import atomic_write, write_text

FOLDER_FORMAT = "geovit-folder/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CELLS = "cells.parquet"
CARD = "README.md"
FILES = (WEIGHTS, CONFIG, CELLS, CARD)


def is_model_folder(path: str | os.PathLike) -> bool:
    """A folder holding a geovit config.json (what export/push write)."""
    return (Path(path) / CONFIG).is_file()


def write_folder(
    out: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    fields: dict[str, Any],
    card: str | None = None,
) -> Path:
    """Write weights, config (every contract field but the cells) and cells, each atomically.

    ``fields`` is :func:`geovit.checkpoint.contract_fields`'s dict; ``card`` becomes README.md.
    """
    out = Path(out)
    # safetensors refuses views and shared storage: one contiguous copy per tensor
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    atomic_write(
        out / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": FOLDER_FORMAT})
    )
    cells = pd.DataFrame(fields["cells"])
    atomic_write(out / CELLS, lambda tmp: cells.to_parquet(tmp, index=False))
    config = {"format": FOLDER_FORMAT, **{k: v for k, v in fields.items() if k != "cells"}}
    write_text(out / CONFIG, json.dumps(config, indent=2))
    if card is not None:
        write_text(out / CARD, card)
    return out


def read_folder(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict of a model folder (``state_dict`` from safetensors, no pickle)."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GeovitError(f"{path / CONFIG} is not readable JSON ({exc}); re-export it") from exc
    if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
        raise GeovitError(
            f"{path / CONFIG} is not a geovit model config ({FOLDER_FORMAT}): pass a folder "
            "written by `geovit export --format safetensors` or `geovit push`"
        )
    try:
        state_dict = load_file(path / WEIGHTS)
        cells = pd.read_parquet(path / CELLS)
    except (OSError, SafetensorError, ValueError) as exc:
        raise GeovitError(
            f"model folder {path} lacks readable {WEIGHTS} and {CELLS} ({exc}); re-export it"
        ) from exc
    config.pop("format")
    return {"state_dict": state_dict, "cells": cells.to_dict("list"), **config}
