"""Streaming shards: any manifest as litdata chunks, for data that a node's disk cannot hold.

Why litdata (Lightning's) and not WebDataset: it belongs to the Lightning stack geovit trains
with, streams from local folders or object stores (s3://, gs://, ...) with the same reader,
splits chunks across ranks and DataLoader workers itself, and shuffles by (seed, epoch) - the
property geovit's exact resume rests on - where WebDataset's buffer shuffle depends on worker
timing. bench/loader.py measures it against folders and zips.

Layout of SHARDS/: ``train/``, ``val/``, ``test/`` (litdata chunks + index.json; one item per
image: its encoded bytes, its row in the split, id, coordinates and place columns) and
``manifest.parquet`` (the same rows without the bytes, with ``row``), so cells, labels and
reports are computed from the table without reading a single image. The val hold-out is fixed
when the shards are written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from litdata import StreamingDataset
from litdata.streaming.writer import BinaryWriter

from geovit.data.images import collate_skip_bad, decode_image
from geovit.data.manifest import COLUMNS, METADATA_COLUMNS, SPLITS
from geovit.data.refs import read_image_bytes
from geovit.errors import GeovitError
from geovit.fileio import write_text

log = logging.getLogger(__name__)

SHARDS_FORMAT = "geovit-shards/1"
INFO = "shards.json"
TABLE = "manifest.parquet"
CHUNK_BYTES = "64MB"


def is_shards(path: str | os.PathLike) -> bool:
    """A folder written by `write_shards`."""
    return (Path(path) / INFO).is_file()


@dataclass
class ShardsReport:
    """Images written per split, and the ones that could not be read (not written, counted)."""

    out: Path
    written: dict[str, int]
    unreadable: int
    examples: list[str]

    def lines(self) -> list[str]:
        done = ", ".join(f"{s} {n:,}" for s, n in self.written.items())
        lines = [f"shards in {self.out}: {done} images"]
        if self.unreadable:
            lines.append(
                f"{self.unreadable:,} images could not be read and were left out, e.g. "
                + ", ".join(self.examples)
            )
        return lines


def _item(row: pd.Series, index: int, image: bytes, meta: Sequence[str]) -> dict:
    item = {
        "image": image,
        "row": index,
        "id": str(row["id"]),
        "latitude": float(row["latitude"]),
        "longitude": float(row["longitude"]),
    }
    # one type per field for every item (litdata checks): missing places are ""
    item.update({c: "" if pd.isna(row[c]) else str(row[c]) for c in meta})
    return item


def write_shards(
    manifest: pd.DataFrame,
    out: str | os.PathLike,
    *,
    chunk_bytes: str | int = CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
) -> ShardsReport:
    """Write each split of ``manifest`` as litdata chunks under ``out`` (which must not exist).

    Everything goes to a temp folder beside ``out`` that is renamed at the end: an interrupted
    run leaves no half-written shards behind.
    """
    out = Path(out)
    if out.exists():
        raise GeovitError(f"--out {out} exists: shards are written to a new folder")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    meta = [c for c in METADATA_COLUMNS if c in manifest.columns]
    written: dict[str, int] = {}
    tables, bad = [], []
    try:
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            if rows.empty:
                continue
            writer = BinaryWriter(str(tmp / split), chunk_bytes=chunk_bytes)
            kept = []
            for _, row in rows.iterrows():
                try:
                    image = read_image_bytes(row["image"])
                except GeovitError:
                    bad.append(str(row["image"]))
                else:
                    writer[len(kept)] = _item(row, len(kept), image, meta)
                    kept.append(row)
                if progress is not None:
                    progress(1)
            writer.done()
            writer.merge()
            table = pd.DataFrame(kept).drop(columns="image").reset_index(drop=True)
            tables.append(table.assign(row=np.arange(len(table))))
            written[split] = len(kept)
        if not written:
            raise GeovitError("the manifest has no readable images to shard")
        pd.concat(tables, ignore_index=True).to_parquet(tmp / TABLE, index=False)
        info = {"format": SHARDS_FORMAT, "splits": written, "unreadable": len(bad)}
        write_text(tmp / INFO, json.dumps(info, indent=2))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ShardsReport(out=out, written=written, unreadable=len(bad), examples=bad[:5])


def read_shard_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """The shards' table as a manifest (COLUMNS + places + row); ``image`` names split/row."""
    path = Path(path)
    try:
        info = json.loads((path / INFO).read_text(encoding="utf-8"))
        table = pd.read_parquet(path / TABLE)
    except (OSError, ValueError) as exc:
        raise GeovitError(f"{path} is not readable shards ({exc}): re-run geovit shards") from exc
    if info.get("format") != SHARDS_FORMAT:
        raise GeovitError(f"{path / INFO} is not {SHARDS_FORMAT}: re-run geovit shards")
    image = [f"{path / s}#{r}" for s, r in zip(table["split"], table["row"], strict=True)]
    table.insert(1, "image", image)
    meta = [c for c in METADATA_COLUMNS if c in table.columns]
    return table[[*COLUMNS, *meta, "row"]]


OUTSIDE = "outside"  # marks a train image outside every kept cell: excluded, not "bad"


class ShardDataset(StreamingDataset):
    """One split's shards as model inputs: decoded, transformed, labelled from ``labels[row]``.

    A corrupt image yields None (warned, counted by `collate_shards` as bad); with
    ``skip_outside`` an image whose label is -1 yields an OUTSIDE marker (dropped, not counted).
    ``index_of`` maps shard rows to the sample's ``index`` (-1: not wanted, dropped likewise).
    Create it inside the DataLoader hook: litdata reads the rank and world size at creation.
    """

    def __init__(
        self,
        input_dir: str,
        labels: np.ndarray,
        transform: Callable[[torch.Tensor], torch.Tensor],
        *,
        shuffle: bool,
        seed: int,
        skip_outside: bool,
        index_of: np.ndarray | None = None,
    ) -> None:
        super().__init__(input_dir, shuffle=shuffle, seed=seed)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.index_of = index_of
        self.image_transform = transform
        self.skip_outside = skip_outside

    def __getitem__(self, index):
        item = super().__getitem__(index)
        row = int(item["row"])
        label = int(self.labels[row])
        index = row if self.index_of is None else int(self.index_of[row])
        if (label < 0 and self.skip_outside) or index < 0:
            return {OUTSIDE: True}
        try:
            image = decode_image(item["image"])
        except GeovitError as exc:
            log.warning("skipping image %s (shard row %d): %s", item["id"], row, exc)
            return None
        return {"image": self.image_transform(image), "label": label, "index": index}


def collate_shards(batch: Sequence[dict | None]) -> dict:
    """collate_skip_bad without the OUTSIDE markers (those are reported by the DataReport)."""
    return collate_skip_bad([b for b in batch if b is None or OUTSIDE not in b])


def shard_split(
    rows: pd.DataFrame, transform: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[ShardDataset, Callable] | None:
    """(in-order dataset, collate) over rows of one split of `read_shard_manifest` (a sample
    index is the row's position in ``rows``), or None when the rows are not from shards."""
    if rows.empty or "row" not in rows.columns:
        return None
    folder = str(rows["image"].iloc[0]).rpartition("#")[0]
    if not folder or not (Path(folder) / "index.json").is_file():
        return None
    total = int(
        json.loads((Path(folder).parent / INFO).read_text())["splits"][rows["split"].iloc[0]]
    )
    index_of = np.full(total, -1, dtype=np.int64)
    index_of[rows["row"].to_numpy()] = np.arange(len(rows))
    labels = np.zeros(total, dtype=np.int64)
    dataset = ShardDataset(
        folder, labels, transform, shuffle=False, seed=0, skip_outside=False, index_of=index_of
    )
    return dataset, collate_shards
