"""One self-contained file per trained model: weights, cells, config and normalization.

A checkpoint is a ``torch.save``'d dict of tensors, lists, dicts, str, int and float only, so it
loads with ``torch.load(weights_only=True)`` (no pickled code runs when a user opens a file from
somewhere else). Lightning's ``best.ckpt``/``last.ckpt`` written by ``geovit train`` carry the
same keys (their ``state_dict`` is the LightningModule's, so its keys start with
``state_dict_prefix``), which makes them valid checkpoints too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from geovit import __version__
from geovit.cells import CellPartition
from geovit.contract import check_values
from geovit.errors import GeovitError
from geovit.fileio import atomic_write
from geovit.hub import resolve_model
from geovit.model import GeoViT, ModelConfig
from geovit.modelfolder import is_model_folder, read_folder

CONTRACT_KEYS = (
    "state_dict",
    "model_config",
    "cells",
    "mean",
    "std",
    "image_size",
    "temperature",
    "train",
    "geovit_version",
)


@dataclass
class LoadedCheckpoint:
    """A checkpoint opened for use: the model is built, loaded and in eval mode."""

    model: GeoViT
    cells: CellPartition
    config: ModelConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    temperature: float = 1.0
    train: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False)
    extra_cells: tuple[CellPartition, ...] = ()  # coarser partitions trained at once


def cells_to_dict(cells: CellPartition) -> dict[str, list]:
    """The cell table as plain lists (weights_only-loadable)."""
    return {col: values.tolist() for col, values in cells.to_frame().items()}


def contract_fields(
    model: GeoViT,
    cells: CellPartition,
    *,
    extra_cells: Sequence[CellPartition] = (),
    train: dict | None = None,
    temperature: float = 1.0,
) -> dict:
    """Every contract key except ``state_dict``: what a Lightning checkpoint adds to its own
    (and ``extra_cells``, the coarser partitions of a multi-partition model, when it has any)."""
    if len(cells) != model.config.num_classes:
        raise GeovitError(
            f"model predicts {model.config.num_classes} classes but the cell table has "
            f"{len(cells)}: train with the cells file the model was built for"
        )
    if [len(c) for c in extra_cells] != list(model.config.extra_classes):
        raise GeovitError(
            f"model has coarser partitions of {model.config.extra_classes} classes but "
            f"{[len(c) for c in extra_cells]} were given"
        )
    mean, std = model.normalization
    extra = {"extra_cells": [cells_to_dict(c) for c in extra_cells]} if extra_cells else {}
    return {
        **extra,
        "model_config": model.config.to_dict(),
        "cells": cells_to_dict(cells),
        "mean": list(mean),
        "std": list(std),
        "image_size": int(model.config.image_size),
        "temperature": float(temperature),
        "train": dict(train or {}),
        "geovit_version": __version__,
    }


def save_checkpoint(
    path: str | os.PathLike,
    source: GeoViT | LoadedCheckpoint,
    cells: CellPartition | None = None,
    *,
    extra_cells: Sequence[CellPartition] = (),
    train: dict | None = None,
    temperature: float | None = None,
) -> Path:
    """Write a plain checkpoint atomically, from a model + cells (+ a multi-partition model's
    coarser ``extra_cells``) or from a LoadedCheckpoint.

    With a LoadedCheckpoint, its cells, train info and temperature are kept unless overridden.
    """
    if isinstance(source, LoadedCheckpoint):
        model = source.model
        extra_cells = source.extra_cells if cells is None else extra_cells
        cells = source.cells if cells is None else cells
        train = source.train if train is None else train
        temperature = source.temperature if temperature is None else temperature
    else:
        model = source
    if cells is None:
        raise GeovitError("save_checkpoint needs the cell partition the model was trained on")
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **contract_fields(
            model,
            cells,
            extra_cells=extra_cells,
            train=train,
            temperature=1.0 if temperature is None else temperature,
        ),
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip archive


def read_raw(path: str | os.PathLike, *, mmap: bool = False) -> dict:
    """The checkpoint's dict (weights_only: no pickled code runs), or one GeovitError that
    says whether the file is missing, truncated (a zip without its end), or something else."""
    path = Path(path)
    if not path.is_file():
        raise GeovitError(f"checkpoint {path} does not exist; train one with `geovit train`")
    size = path.stat().st_size
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        with path.open("rb") as f:
            zipped = f.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        if zipped or size == 0:
            raise GeovitError(
                f"checkpoint {path} is truncated/incomplete ({size:,} bytes): an interrupted "
                "copy or a full disk; use the previous checkpoint or copy it again"
            ) from exc
        raise GeovitError(
            f"checkpoint {path} ({size:,} bytes) is not a loadable geovit checkpoint "
            f"({type(exc).__name__}); pass model.pt, best.ckpt or last.ckpt from a "
            "`geovit train` run"
        ) from exc
    return _require_contract(raw, path)


def _require_contract(raw: dict, path: str | os.PathLike) -> dict:
    missing = [k for k in CONTRACT_KEYS if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise GeovitError(
            f"checkpoint {path} is not a geovit checkpoint (missing {', '.join(missing)}); "
            "pass model.pt, best.ckpt or last.ckpt from a `geovit train` run"
        )
    return raw


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Open a geovit checkpoint (plain or Lightning .ckpt, a model folder, or a Hub model
    ``hf-hub:USER/NAME``) on the CPU, model in eval mode."""
    path = resolve_model(path)
    raw = _require_contract(read_folder(path), path) if is_model_folder(path) else read_raw(path)
    check_values(raw, f"checkpoint {path}")
    # the weights come from the file: never download or read the original backbone weights
    # (an hf-hub: backbone is rebuilt from the timm config recorded in the checkpoint)
    config = ModelConfig.from_dict(raw["model_config"]).without_weight_sources()
    cells = CellPartition.from_frame(pd.DataFrame(raw["cells"]))
    model = GeoViT(config)
    prefix = raw.get("state_dict_prefix", "")
    state = {k[len(prefix) :]: v for k, v in raw["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise GeovitError(
            f"checkpoint {path} weights do not fit its model config ({str(exc).splitlines()[0]}); "
            "the file is damaged or was edited"
        ) from exc
    model.eval()
    return LoadedCheckpoint(
        model=model,
        cells=cells,
        config=config,
        mean=tuple(float(v) for v in raw["mean"]),
        std=tuple(float(v) for v in raw["std"]),
        image_size=int(raw["image_size"]),
        temperature=float(raw["temperature"]),
        train=dict(raw["train"]),
        raw=raw,
        extra_cells=tuple(
            CellPartition.from_frame(pd.DataFrame(c)) for c in raw.get("extra_cells", [])
        ),
    )


def set_temperature(
    path: str | os.PathLike, temperature: float, out: str | os.PathLike | None = None
) -> Path:
    """Store a fitted softmax temperature in a checkpoint: rewrite `path` atomically, or write a
    copy to `out` (the original untouched). Returns the file written."""
    if not temperature > 0:
        raise GeovitError(f"temperature {temperature} must be > 0")
    raw = read_raw(path)
    raw["temperature"] = float(temperature)
    target = Path(out if out is not None else path)
    atomic_write(target, lambda tmp: torch.save(raw, tmp))
    return target
