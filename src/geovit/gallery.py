"""The retrieval gallery: training images' embeddings in a FAISS index, with their points.

``geovit index`` streams the training split through a model and stores, in one file, the
L2-normalized pooled embeddings (FAISS: exact inner product, i.e. cosine, by default; IVF for
millions of images), each image's coordinates, and the model's weight fingerprint: embeddings of
one model mean nothing to another, so :meth:`Gallery.load` refuses a gallery built by a
different checkpoint. Images are stored sorted by cell, so "the images of cell c" is one id
range and a search restricted to a few cells is one FAISS ID selector. NumPy + FAISS, no torch.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geovit.errors import GeovitError
from geovit.fileio import atomic_write

GALLERY_FORMAT = "geovit-gallery/1"
# Inverted lists an IVF search visits. Restricted to a few cells' images, IVF misses many
# nearest images (bench/retrieval.py: 12% exact on random embeddings); flat is the default.
IVF_NPROBE = 32


def _faiss() -> Any:
    import faiss

    return faiss


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, C-contiguous, as FAISS wants): cosine = dot."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Gallery:
    """FAISS ``index`` over images sorted by cell: cell c's images are ids
    ``indptr[c]:indptr[c+1]``, at ``lat``/``lon``. ``meta`` holds the format, the model
    fingerprint, the cell count and the build's counts."""

    index: Any
    lat: np.ndarray
    lon: np.ndarray
    indptr: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return len(self.indptr) - 1

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        lat: np.ndarray,
        lon: np.ndarray,
        labels: np.ndarray,
        n_cells: int,
        fingerprint: str,
        *,
        ivf: int | None = None,
        **meta: Any,
    ) -> Gallery:
        """A gallery of images (embeddings (N,D), degrees, cell labels; -1 = outside every
        cell: counted in ``meta`` but not stored, no top-k search can reach them)."""
        faiss = _faiss()
        labels = np.asarray(labels, dtype=np.int64)
        inside = labels >= 0
        order = np.flatnonzero(inside)[np.argsort(labels[inside], kind="stable")]
        if not len(order):
            raise GeovitError("no image to index lies in a cell of this model; check --data")
        x = normalize(np.asarray(embeddings)[order])
        dim = x.shape[1]
        if ivf:
            if ivf > len(x):
                raise GeovitError(f"--ivf {ivf} lists need at least as many images ({len(x)})")
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, ivf, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(x)
        counts = np.bincount(labels[order], minlength=n_cells)
        return cls(
            index=index,
            lat=np.asarray(lat, dtype=np.float64)[order],
            lon=np.asarray(lon, dtype=np.float64)[order],
            indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            meta={
                "format": GALLERY_FORMAT,
                "fingerprint": fingerprint,
                "index": f"ivf{ivf}" if ivf else "flat",
                "n_images": len(order),
                "n_outside_cells": int((~inside).sum()),
                **meta,
            },
        )

    def nearest(self, query: np.ndarray, cells: np.ndarray, m: int = 1) -> np.ndarray:
        """Ids (B,m) of the m gallery images nearest (cosine) to each query embedding (B,D)
        among the images of that row's cells (B,k); -1 where fewer exist. One FAISS search per
        query, each restricted to its cells' id ranges by an ID selector."""
        faiss = _faiss()
        q = normalize(query)
        if q.shape[1] != self.index.d:
            raise GeovitError(
                f"the model's embeddings have {q.shape[1]} dimensions but the gallery "
                f"{self.index.d}; rebuild it with `geovit index` for this checkpoint"
            )
        cells = np.asarray(cells, dtype=np.int64)
        start, stop = self.indptr[cells], self.indptr[cells + 1]  # (B,k) id ranges
        lengths = stop - start
        per_row = lengths.sum(axis=1)
        # Every row's allowed ids, concatenated: the ranges expanded without a loop over cells.
        flat_len = lengths.ravel()
        ids = np.arange(flat_len.sum()) - np.repeat(np.cumsum(flat_len) - flat_len, flat_len)
        ids += np.repeat(start.ravel(), flat_len)
        bounds = np.concatenate([[0], np.cumsum(per_row)])
        out = np.full((len(q), m), -1, dtype=np.int64)
        ivf = isinstance(self.index, faiss.IndexIVF)
        for row in np.flatnonzero(per_row):
            sel = faiss.IDSelectorBatch(ids[bounds[row] : bounds[row + 1]])
            params = (
                faiss.SearchParametersIVF(sel=sel, nprobe=IVF_NPROBE)
                if ivf
                else faiss.SearchParameters(sel=sel)
            )
            out[row] = self.index.search(q[row : row + 1], m, params=params)[1][0]
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """One file (a NumPy .npz: no pickle), written atomically."""
        faiss = _faiss()
        arrays = {
            "index": faiss.serialize_index(self.index),
            "lat": self.lat,
            "lon": self.lon,
            "indptr": self.indptr,
            "meta": np.array(json.dumps(self.meta)),
        }

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: str | None = None) -> Gallery:
        """Open a gallery; with ``fingerprint``, refuse one built by another model."""
        faiss = _faiss()
        if not Path(path).is_file():
            raise GeovitError(f"--index {path} does not exist; build it with `geovit index`")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("index", "lat", "lon", "indptr", "meta")}
            meta = json.loads(str(arrays["meta"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise GeovitError(
                f"--index {path} is not a geovit gallery ({type(exc).__name__}); "
                "build it with `geovit index`"
            ) from exc
        if not isinstance(meta, dict) or meta.get("format") != GALLERY_FORMAT:
            raise GeovitError(f"--index {path} is not a {GALLERY_FORMAT} gallery; rebuild it")
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            raise GeovitError(
                f"--index {path} was built with another model (weights {meta.get('fingerprint')}"
                f", this one {fingerprint}); rebuild it with `geovit index` for this checkpoint"
            )
        return cls(
            index=faiss.deserialize_index(arrays["index"]),
            lat=arrays["lat"],
            lon=arrays["lon"],
            indptr=arrays["indptr"],
            meta=meta,
        )
