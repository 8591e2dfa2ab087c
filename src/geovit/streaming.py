"""Training from streaming shards (geovit.data.shards) with the guarantees of folder training.

- per-rank and per-worker splitting: litdata's, from the rank/world size it reads when the
  dataset is created (in the dataloader hook, after DDP has started);
- shuffling by (seed, epoch): the dataset's epoch is set from the trainer before every epoch,
  and worker seeds come from EpochSeededLoader, so an epoch never depends on history and
  ``--resume`` from an epoch's last.ckpt replays the uninterrupted run exactly;
- labels come from the shards' table, so train images outside the kept cells are counted in
  the DataReport and skipped without being decoded. Under DDP litdata drops the few images
  that would make the ranks' batch counts differ (also in val), as DistributedSampler pads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from geovit.cells import CellPartition
from geovit.data.images import build_transform
from geovit.data.shards import ShardDataset, collate_shards, split_source
from geovit.training import DataReport, EpochSeededLoader, TrainConfig, label_splits


class _EpochShardLoader(EpochSeededLoader):
    """EpochSeededLoader that also tells the streaming dataset its epoch (litdata counts from 1)."""

    def __iter__(self):
        self.dataset.set_epoch(self.epoch + 1)
        return super().__iter__()


class ShardDataModule(L.LightningDataModule):
    """Train/val loaders over SHARDS/train and SHARDS/val; ``train_coords``/``val_coords``
    indexed by shard row (a sample's ``index``)."""

    def __init__(
        self,
        root: str | os.PathLike,
        train_labels: np.ndarray,
        val_labels: np.ndarray,
        val_coords: np.ndarray,
        transforms: tuple,
        *,
        train_coords: np.ndarray,
        batch_size: int,
        workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.labels = {"train": train_labels, "val": val_labels}
        self.val_coords = np.asarray(val_coords, dtype=np.float64)
        self.train_coords = np.asarray(train_coords, dtype=np.float64)
        self.transforms = dict(zip(("train", "val"), transforms, strict=True))
        self.batch_size, self.workers, self.seed = batch_size, workers, seed

    def dataset(self, split: str) -> ShardDataset:
        train = split == "train"
        ds = ShardDataset(
            split_source(self.root, split),
            self.labels[split],
            self.transforms[split],
            shuffle=train,
            seed=self.seed,
            skip_outside=train,
        )
        ds.set_batch_size(self.batch_size)
        ds.set_num_workers(self.workers)
        return ds

    def _kwargs(self) -> dict:
        return dict(
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=collate_shards,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        return _EpochShardLoader(
            ds,
            seed=self.seed,
            trainer=self.trainer,
            drop_last=len(ds) > self.batch_size,
            **self._kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val"), **self._kwargs())


def _by_row(table: pd.DataFrame, values: np.ndarray) -> np.ndarray:
    """``values`` of one split's rows placed at their shard ``row``."""
    out = np.empty((len(table), *values.shape[1:]), dtype=values.dtype)
    out[table["row"].to_numpy()] = values
    return out


def build_shard_datamodule(
    manifest: pd.DataFrame,
    cells: CellPartition,
    *,
    root: str | os.PathLike,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: TrainConfig,
) -> tuple[ShardDataModule, DataReport]:
    """build_datamodule for a shards folder (``manifest`` = read_shard_manifest(root)); a
    mirror of remote shards (`open_shards`) streams its chunks from the store."""
    labels, _, is_val, report = label_splits(manifest, cells)
    is_train = (manifest["split"] == "train").to_numpy()
    train, val = manifest[is_train], manifest[is_val]

    def coords(rows: pd.DataFrame) -> np.ndarray:
        return _by_row(rows, rows[["latitude", "longitude"]].to_numpy(dtype=np.float64))

    dm = ShardDataModule(
        root,
        _by_row(train, labels[is_train]),
        _by_row(val, labels[is_val]),
        coords(val),
        (
            build_transform(image_size, mean, std, train=True, hflip=config.hflip),
            build_transform(image_size, mean, std, train=False),
        ),
        train_coords=coords(train),
        batch_size=config.batch_size,
        workers=config.workers,
        seed=config.seed,
    )
    return dm, report
