"""Evaluate a predictor on a manifest split, fit its temperature, and write the results.

The split is streamed once through the DataLoader under ``torch.inference_mode``; every batch is
reduced by :class:`geovit.metrics.GeoMetrics` at once, so memory does not grow with the number of
classes x images (OSV-5M's test set x thousands of cells would be tens of GB of logits).
Unreadable images are skipped by the loader and counted in the output, never silently dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from geovit.calibration import TemperatureFit, fit_temperature
from geovit.data.images import ImageDataset, collate_skip_bad
from geovit.data.shards import shard_split
from geovit.errors import GeovitError
from geovit.figures import figure_bytes, save_figure
from geovit.fileio import write_text
from geovit.gallery import Gallery
from geovit.geo import haversine_km
from geovit.metrics import (
    CONCENTRATION_RADIUS_KM,
    HEADLINE_KM,
    PLACE_LEVELS,
    TOP_KS,
    GeoMetrics,
    ScoredBatch,
    Table,
    distance_convention,
    log_softmax,
    num,
    reverse_geocode,
)
from geovit.points import describe
from geovit.predictor import Predictor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from geovit.cells import CellPartition

Progress = Callable[[int], None]


def split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The manifest rows of one split, in manifest order."""
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        have = ", ".join(f"{s} {n}" for s, n in manifest["split"].value_counts().items())
        raise GeovitError(
            f"the data has no {split!r} images (splits: {have or 'none'}); pick another --split"
        )
    return rows.reset_index(drop=True)


def _batches(
    predictor: Predictor,
    rows: pd.DataFrame,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    workers: int,
    progress: Progress | None,
) -> Iterator[tuple[np.ndarray, torch.Tensor, int]]:
    """Yield (row indices, readable images, unreadable images in the batch) per batch."""
    dataset, collate = shard_split(rows, transform) or (
        ImageDataset(rows["image"].tolist(), None, transform),
        collate_skip_bad,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.device(predictor.device).type == "cuda",
    )
    for batch in loader:
        idx = batch["index"].numpy()
        if progress is not None:
            progress(len(idx) + batch["n_bad"])
        yield idx, batch["image"], int(batch["n_bad"])


def stream_logits(
    predictor: Predictor,
    rows: pd.DataFrame,
    *,
    batch_size: int = 64,
    workers: int = 0,
    scaled: bool = True,
    progress: Progress | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yield (row indices, logits (B,K) float32, unreadable images in the batch) per batch,
    one crop per image (a temperature fit needs logits, not averaged probabilities)."""
    for idx, images, bad in _batches(
        predictor, rows, predictor.transform, batch_size, workers, progress
    ):
        logits = np.asarray(predictor.logits(images, scaled=scaled)) if len(idx) else None
        yield idx, logits, bad


def stream_outputs(
    predictor: Predictor,
    rows: pd.DataFrame,
    need: frozenset[str] | set[str] = frozenset(),
    *,
    batch_size: int = 64,
    workers: int = 0,
    progress: Progress | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray] | None, int]]:
    """Yield (row indices, predictor.infer's outputs (with its test-time crops) as NumPy,
    unreadable images in the batch) per batch; outputs are None when no image was readable."""
    for idx, images, bad in _batches(
        predictor, rows, predictor.input_transform, batch_size, workers, progress
    ):
        out = predictor.infer(images, need) if len(idx) else None
        yield idx, None if out is None else {k: np.asarray(v) for k, v in out.items()}, bad


def _true_places(
    labels: dict[str, np.ndarray], lat: np.ndarray, lon: np.ndarray
) -> dict[str, np.ndarray]:
    """OSV-5M ``unique_*`` labels of a batch; levels the manifest lacks are geocoded from the
    true coordinates with the same geocoder that labels the predictions."""
    if len(labels) < len(PLACE_LEVELS):
        return {**reverse_geocode(lat, lon), **labels}
    return labels


def image_stats(
    cells: CellPartition,
    idx: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    sequence: np.ndarray,
) -> pd.DataFrame:
    """Per image of one batch (row indices `idx` into the split's arrays, logits (B,K)): row,
    label, top1, p1, correct, entropy (nats), mass_near_truth (probability on cells whose
    centroid is < 200 km from the true location) and sequence (the image's drive)."""
    logp = log_softmax(logits)
    p = np.exp(logp)
    top1 = p.argmax(axis=1)
    near = haversine_km(lat[idx, None], lon[idx, None], cells.centroid_lat, cells.centroid_lon)
    return pd.DataFrame(
        {
            "row": idx,
            "label": labels[idx],
            "top1": top1,
            "p1": p[np.arange(len(idx)), top1],
            "correct": top1 == labels[idx],
            "entropy": -(p * logp).sum(axis=1),
            "mass_near_truth": (p * (near < CONCENTRATION_RADIUS_KM)).sum(axis=1),
            "sequence": sequence[idx],
        }
    )


def split_sequences(rows: pd.DataFrame) -> np.ndarray:
    """Each row's drive (its `sequence` column), or the row itself when there is none."""
    return rows["sequence"].to_numpy() if "sequence" in rows else np.arange(len(rows))


def evaluate(
    predictor: Predictor,
    manifest: pd.DataFrame,
    split: str = "test",
    *,
    batch_size: int = 64,
    workers: int = 0,
    ks: Sequence[int] = TOP_KS,
    places: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """All metrics of ``predictor`` on one split of a manifest (see geovit.metrics for keys)."""
    return _evaluate(predictor, manifest, split, batch_size, workers, ks, places, progress)[0]


def evaluate_with_images(
    predictor: Predictor,
    manifest: pd.DataFrame,
    split: str = "test",
    *,
    batch_size: int = 64,
    workers: int = 0,
    ks: Sequence[int] = TOP_KS,
    places: bool = True,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """evaluate's metrics and, from the same pass over the split, the per-image numbers of
    image_stats for every readable image (the report's gallery picks from them)."""
    metrics, stats = _evaluate(
        predictor, manifest, split, batch_size, workers, ks, places, progress, per_image=True
    )
    return metrics, stats


def _evaluate(
    predictor: Predictor,
    manifest: pd.DataFrame,
    split: str,
    batch_size: int,
    workers: int,
    ks: Sequence[int],
    places: bool,
    progress: Progress | None,
    per_image: bool = False,
) -> tuple[dict[str, Any], pd.DataFrame | None]:
    rows = split_rows(manifest, split)
    lat = rows["latitude"].to_numpy(dtype=np.float64)
    lon = rows["longitude"].to_numpy(dtype=np.float64)
    labels = predictor.cells.assign(lat, lon)
    sequence = split_sequences(rows)
    cells = predictor.cells
    metrics = GeoMetrics(
        cells.centroid_lat, cells.centroid_lon, ks=ks, place_levels=PLACE_LEVELS if places else ()
    )
    place_labels = {
        level: rows[f"unique_{level}"].to_numpy(dtype=object)
        for level in PLACE_LEVELS
        if f"unique_{level}" in rows.columns
    }
    n_bad = 0
    parts = []
    point = predictor.point
    for idx, out, bad in stream_outputs(
        predictor, rows, point.needs, batch_size=batch_size, workers=workers, progress=progress
    ):
        n_bad += bad
        if out is None:
            continue
        truth = None
        if places:
            batch_labels = {level: v[idx] for level, v in place_labels.items()}
            truth = _true_places(batch_labels, lat[idx], lon[idx])
        # the point estimate enters here (geovit.points)
        pred_lat, pred_lon = point.locate(out)
        metrics.update(
            ScoredBatch.from_logits(
                out["log_probs"], labels[idx], lat[idx], lon[idx], pred_lat, pred_lon, truth
            )
        )
        if per_image:
            parts.append(image_stats(cells, idx, out["log_probs"], labels, lat, lon, sequence))
    if n_bad == len(rows):
        raise GeovitError(
            f"none of the {len(rows)} {split!r} images could be read; check the image paths"
        )
    result = {
        "split": split,
        "n_split_images": len(rows),
        "n_unreadable": n_bad,
        "n_classes": len(cells),
        "temperature": predictor.temperature,
        "point": point.name,
        "point_description": describe(point.name),
        "tta": predictor.tta,
        **metrics.compute(),
    }
    return result, pd.concat(parts, ignore_index=True) if per_image else None


def majority_baseline(
    manifest: pd.DataFrame, cells: CellPartition, split: str = "test"
) -> dict[str, float]:
    """Chance and "always predict the most common training cell" on a split's top-1 accuracy and
    within-HEADLINE_KM accuracy (the predicted point being that cell's centroid)."""
    rows = manifest[manifest["split"] == split]
    lat, lon = rows["latitude"].to_numpy(np.float64), rows["longitude"].to_numpy(np.float64)
    common = int(np.argmax(cells.counts))
    d = haversine_km(lat, lon, cells.centroid_lat[common], cells.centroid_lon[common])
    return {
        "chance_top1": 1.0 / len(cells),
        "majority_top1": float(np.mean(cells.assign(lat, lon) == common)),
        f"majority_within_{HEADLINE_KM:g}km": float(np.mean(d < HEADLINE_KM)),
    }


def split_logits(
    predictor: Predictor,
    manifest: pd.DataFrame,
    split: str = "val",
    *,
    batch_size: int = 64,
    workers: int = 0,
    max_images: int = 20_000,
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits (T = 1) and cell labels of (a seeded sample of at most ``max_images`` of) one
    split, readable images only.

    Unlike evaluation a temperature fit needs every logit at once, hence the cap: 20k images x
    2k cells is 160 MB of float32.
    """
    rows = split_rows(manifest, split)
    if len(rows) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), max_images, replace=False))
        rows = rows.iloc[keep].reset_index(drop=True)
    labels = predictor.cells.assign(rows["latitude"].to_numpy(), rows["longitude"].to_numpy())
    parts = [
        (idx, logits)
        for idx, logits, _ in stream_logits(
            predictor, rows, batch_size=batch_size, workers=workers, scaled=False, progress=progress
        )
        if logits is not None
    ]
    if not parts:
        raise GeovitError(
            f"none of the {len(rows)} {split!r} images could be read; check the image paths"
        )
    idx = np.concatenate([i for i, _ in parts])
    return np.concatenate([lg for _, lg in parts]), labels[idx]


def index_split(
    predictor: Predictor,
    manifest: pd.DataFrame,
    split: str = "train",
    *,
    ivf: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    progress: Progress | None = None,
) -> Gallery:
    """The retrieval gallery of one split: its readable images' embeddings (with the
    predictor's test-time crops), points and cells, for this predictor's model only;
    ``meta["n_unreadable"]`` counts the images that could not be read."""
    rows = split_rows(manifest, split)
    idx, emb, n_bad = [], [], 0
    for i, out, bad in stream_outputs(
        predictor, rows, {"embedding"}, batch_size=batch_size, workers=workers, progress=progress
    ):
        n_bad += bad
        if out is not None:
            idx.append(i)
            emb.append(out["embedding"])
    if not idx:
        raise GeovitError(
            f"none of the {len(rows)} {split!r} images could be read; check the image paths"
        )
    good = rows.iloc[np.concatenate(idx)]
    lat, lon = good["latitude"].to_numpy(np.float64), good["longitude"].to_numpy(np.float64)
    cells = predictor.cells
    return Gallery.build(
        np.concatenate(emb), lat, lon, cells.assign(lat, lon), len(cells),
        predictor.fingerprint(), ivf=ivf, n_unreadable=n_bad, split=split,
    )  # fmt: skip


def calibrate(
    predictor: Predictor, manifest: pd.DataFrame, split: str = "val", **kw: Any
) -> TemperatureFit:
    """Fit the temperature on one split (``split_logits``'s options)."""
    return fit_temperature(*split_logits(predictor, manifest, split, **kw))


# ----------------------------------------------------------------------------- writers


def write_metrics_json(metrics: dict[str, Any], path: str | os.PathLike) -> Path:
    return write_text(path, json.dumps(metrics, indent=2, sort_keys=False) + "\n")


def summary_tables(m: dict[str, Any]) -> list[Table]:
    """(title, header, rows) tables of a metrics dict: shared by metrics.md, the CLI and the
    report. The run's own counts first, then every accumulator's tables."""
    images = (
        "Images",
        ["split", "images in split", "scored", "unreadable (skipped)", "outside every cell",
         "classes"],
        [[m["split"], str(m["n_split_images"]), str(m["n_images"]), str(m["n_unreadable"]),
          str(m["n_outside_cells"]), str(m["n_classes"])]],
    )  # fmt: skip
    return [images, *GeoMetrics.tables_of(m)]


def metrics_markdown(m: dict[str, Any], title: str = "Evaluation") -> str:
    """A readable report of a metrics dict, stating the distance convention."""
    lines = [f"# {title}", "", f"Distances: {distance_convention(m)}.", ""]
    for name, header, rows in summary_tables(m):
        lines += [f"## {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    lines += [
        "Outside-cell images are photos whose true location lies in no kept cell (pruned, sparse "
        "areas): they have no correct class, so they count as wrong in the first accuracy row and "
        "are left out of the second and of the cross-entropy; every scored image counts for "
        "distances and place accuracy. The expected calibration error (ECE) is "
        "sum over bins of (bin size / n) * |accuracy - mean confidence| over all scored images.",
        "",
    ]
    return "\n".join(lines)


def write_metrics_md(m: dict[str, Any], path: str | os.PathLike, title: str = "Evaluation") -> Path:
    return write_text(path, metrics_markdown(m, title))


OVER_COLOUR, UNDER_COLOUR = "#d62728", "#2ca02c"  # confidence above / below accuracy
RELIABILITY_DPI = 120


def reliability_figure(m: dict[str, Any]) -> Figure:
    """Reliability diagram: accuracy vs mean confidence per bin, the gap shaded red where the
    model is over-confident (confidence > accuracy) and green where it is under-confident, the
    bin counts below."""
    from matplotlib.figure import Figure

    cal = m["calibration"]
    bins = cal["bins"]
    lower = np.array([b["lower"] for b in bins])
    width = bins[0]["upper"] - bins[0]["lower"]
    acc = np.array([b["accuracy"] or 0.0 for b in bins])
    conf = np.array([b["confidence"] if b["confidence"] is not None else np.nan for b in bins])
    count = np.array([b["count"] for b in bins])
    fig = Figure(figsize=(5, 6.2), layout="constrained")
    ax, axc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(
        lower, acc, width=width, align="edge", color="#4c72b0", edgecolor="white", label="accuracy"
    )
    gap = np.nan_to_num(conf - acc)
    for sign, colour, label in (
        (1, OVER_COLOUR, "over-confident: confidence > accuracy"),
        (-1, UNDER_COLOUR, "under-confident: confidence < accuracy"),
    ):
        part = np.where(sign * gap > 0, gap, 0.0)
        ax.bar(lower, part, bottom=acc, width=width, align="edge", color=colour, alpha=0.5,
               edgecolor="white", label=label)  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(
        ylim=(0, 1),
        ylabel="top-1 accuracy",
        title=f"{m['split']}: ECE {num(cal['ece'], '.4f')}, T = {num(m['temperature'], '.3f')}",
    )
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(lower, count, width=width, align="edge", color="#8c8c8c", edgecolor="white")
    axc.set(xlim=(0, 1), xlabel="top-1 confidence", ylabel="images")
    return fig


def reliability_png(m: dict[str, Any]) -> bytes:
    """The reliability diagram as PNG bytes."""
    return figure_bytes(reliability_figure(m), trim=False, dpi=RELIABILITY_DPI)


def write_reliability_diagram(m: dict[str, Any], path: str | os.PathLike) -> Path:
    """The reliability diagram written (atomically) as a PNG file."""
    return save_figure(reliability_figure(m), path, trim=False, dpi=RELIABILITY_DPI)


def write_outputs(
    m: dict[str, Any], out_dir: str | os.PathLike, title: str = "Evaluation"
) -> dict[str, Path]:
    """metrics.json, metrics.md and reliability.png in ``out_dir``."""
    out = Path(out_dir)
    return {
        "json": write_metrics_json(m, out / "metrics.json"),
        "markdown": write_metrics_md(m, out / "metrics.md", title),
        "reliability": write_reliability_diagram(m, out / "reliability.png"),
    }
