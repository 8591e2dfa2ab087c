"""Streaming shards: any manifest as litdata chunks, for data that a node's disk cannot hold.

Why litdata (Lightning's) and not WebDataset: it belongs to the Lightning stack geovit trains
with, streams from local folders or object stores (s3://, gs://, ...) with the same reader,
splits chunks across ranks and DataLoader workers itself, and shuffles by (seed, epoch) - the
property geovit's exact resume rests on - where WebDataset's buffer shuffle depends on worker
timing. bench/loader.py measures it against folders, zips and WebDataset tars (the same
CPU cost per image within noise: bench/RESULTS.md).

SHARDS may also be an object-store URL (``s3://bucket/prefix``, S3-compatible stores through
``AWS_ENDPOINT_URL``; ``gs://`` with google-cloud-storage installed): `open_shards` probes the
endpoint in seconds, copies the two small table files into a local mirror under the cache
folder and points litdata at the URL with that mirror as its cache (``litdata.Dir``), so chunks
are fetched as each rank and worker needs them and everything else reads local files.

Layout of SHARDS/: ``train/``, ``val/``, ``test/`` (litdata chunks + index.json; one item per
image: its encoded bytes, its row in the split, id, coordinates and place columns) and
``manifest.parquet`` (the same rows without the bytes, with ``row``), so cells, labels and
reports are computed from the table without reading a single image. The val hold-out is fixed
when the shards are written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from litdata import StreamingDataset
from litdata.streaming.resolver import Dir
from litdata.streaming.writer import BinaryWriter

from geovit.data.images import collate_skip_bad, decode_image
from geovit.data.manifest import COLUMNS, METADATA_COLUMNS, SPLITS
from geovit.data.refs import read_image_bytes
from geovit.errors import GeovitError
from geovit.fileio import write_bytes, write_text
from geovit.net import require_host

log = logging.getLogger(__name__)

SHARDS_FORMAT = "geovit-shards/1"
INFO = "shards.json"
TABLE = "manifest.parquet"
CHUNK_BYTES = "64MB"
SOURCE = "source.json"  # in a local mirror of remote shards: the URL the chunks stream from
# Object stores litdata 0.2.76 streams from that geovit can reach without a Lightning account.
REMOTE_SCHEMES = ("s3", "gs")
CACHE_ENV = "GEOVIT_CACHE"


def is_shards(path: str | os.PathLike) -> bool:
    """A folder written by `write_shards` (or a local mirror of remote ones)."""
    return (Path(path) / INFO).is_file()


def shards_url(data: str | os.PathLike) -> str | None:
    """DATA as an object-store URL (``s3://bucket/prefix``), or None for a local path. The CLI
    parses --data as a path, and a Path collapses "//", so "s3:/bucket" counts too."""
    match = re.fullmatch(r"([a-z0-9]+):/+(.*?)/*", os.fspath(data))
    if match is None or match[1] not in (*REMOTE_SCHEMES, "azure", "r2", "hf"):
        return None
    if match[1] not in REMOTE_SCHEMES:
        raise GeovitError(
            f"--data {match[1]}:// is not supported: geovit streams shards from "
            f"{', '.join(s + '://' for s in REMOTE_SCHEMES)} (or a mounted folder)"
        )
    return f"{match[1]}://{match[2]}"


def default_cache_dir() -> Path:
    """Where remote shards are mirrored: $GEOVIT_CACHE, else $XDG_CACHE_HOME/geovit/shards."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "geovit" / "shards"


def _probe_store(url: str) -> None:
    """Fail in seconds with one line when the store of ``url`` cannot be used from here: no
    client library, no credentials, or its endpoint unreachable (the clients' own retries
    would take minutes)."""
    from urllib.parse import urlsplit

    scheme = url.partition("://")[0]
    if scheme == "gs":
        try:  # litdata's gs:// client (find_spec imports the parents: google.cloud may be absent)
            found = importlib.util.find_spec("google.cloud.storage") is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise GeovitError(
                f"--data {url}: gs:// needs the google-cloud-storage package "
                "(pip install google-cloud-storage) and Google credentials"
            )
        host, port = "storage.googleapis.com", 443
        advice = "check the network and your Google credentials"
    else:
        try:
            import boto3  # litdata's s3:// client
        except ImportError:
            raise GeovitError(
                f"--data {url}: s3:// needs boto3: pip install 'geovit[s3]' (or boto3)"
            ) from None
        session = boto3.Session()
        if session.get_credentials() is None:
            raise GeovitError(
                f"--data {url}: no AWS credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / ~/.aws/credentials)"
            )
        endpoint = urlsplit(session.client("s3").meta.endpoint_url)
        host = endpoint.hostname or "s3.amazonaws.com"
        port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
        advice = "check the network, or AWS_ENDPOINT_URL for an S3-compatible store"
    require_host(host, f"read {url}", advice, port=port)


def _fetch(url: str, name: str) -> bytes:
    """One small object under ``url`` through litdata's downloader for its scheme."""
    from litdata.streaming.downloader import get_downloader

    buffer = io.BytesIO()
    try:
        get_downloader(url, "", []).download_fileobj(f"{url}/{name}", buffer)
    except Exception as exc:  # each client has its own errors: missing key, denied, ...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise GeovitError(
            f"--data {url}: cannot read {name} ({type(exc).__name__}: {first}); is it a "
            "folder written by `geovit shards`, and may these credentials read it?"
        ) from None
    return buffer.getvalue()


def open_shards(data: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The local folder of the shards DATA names: DATA itself when it is a shards folder, a
    mirror under ``cache_dir`` (default `default_cache_dir`) when it is an object-store URL,
    or None when DATA is not shards.

    The mirror holds the remote table files and SOURCE (the URL); its split folders are
    litdata's cache for the chunks. It is named by the URL and the table's hash, so rewritten
    shards never mix with chunks cached from an older version.
    """
    url = shards_url(data)
    if url is None:
        return Path(data) if is_shards(data) else None
    _probe_store(url)
    info, table = _fetch(url, INFO), _fetch(url, TABLE)
    key = hashlib.sha256(url.encode() + b"\0" + table).hexdigest()[:16]
    mirror = Path(cache_dir or default_cache_dir()) / key
    if not is_shards(mirror):
        write_bytes(mirror / TABLE, table)
        write_text(mirror / SOURCE, json.dumps({"url": url}))
        write_bytes(mirror / INFO, info)  # last: its presence marks a complete mirror
    return mirror


def split_source(root: str | os.PathLike, split: str) -> str | Dir:
    """litdata's input_dir for one split of a shards folder: the folder itself, or for a
    mirror of remote shards its URL with the mirror's split folder as the chunk cache."""
    root = Path(root)
    if not (root / SOURCE).is_file():
        return str(root / split)
    url = json.loads((root / SOURCE).read_text(encoding="utf-8"))["url"]
    return Dir(path=str(root / split), url=f"{url}/{split}")


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
        input_dir: str | Dir,
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
    folder = Path(str(rows["image"].iloc[0]).rpartition("#")[0])
    if not folder.name or not is_shards(folder.parent):
        return None
    split = rows["split"].iloc[0]
    total = int(json.loads((folder.parent / INFO).read_text())["splits"][split])
    index_of = np.full(total, -1, dtype=np.int64)
    index_of[rows["row"].to_numpy()] = np.arange(len(rows))
    labels = np.zeros(total, dtype=np.int64)
    dataset = ShardDataset(
        split_source(folder.parent, split),
        labels,
        transform,
        shuffle=False,
        seed=0,
        skip_outside=False,
        index_of=index_of,
    )
    return dataset, collate_shards
