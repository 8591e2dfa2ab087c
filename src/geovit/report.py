"""One self-contained HTML report of a checkpoint on a dataset split (images embedded as base64).

Sections: the evaluation metrics (geovit.evaluation), the reliability diagram, a map of all cells
coloured by their test accuracy, and a gallery of the design's four kinds of examples, each with
its occlusion heatmap and probability map. The kinds are defined relative to the split's own
distribution (quartiles), so every model gets examples, and each image appears at most once:

- confident_right: top-1 correct and top-1 probability >= the split's 75th percentile.
- confident_wrong: top-1 wrong and top-1 probability >= the 75th percentile.
- tight_cluster: top-1 wrong, yet the probability mass on cells whose centroid lies within
  200 km of the true location is > 0 and >= its 75th percentile (most mass first).
- diffuse: entropy >= its 75th percentile and top-1 probability <= its median (highest entropy
  first).

Examples come from different sequences (drives) when the manifest has a `sequence` column: two
frames of one drive would show the same scene twice. The page also shows the baselines (chance,
always the most common training cell), the run's training curves (its logs/*/metrics.csv, when
the checkpoint sits in its run folder) and a warning when the data are synthetic.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from geovit.data.synth import SYNTHETIC_NOTICE
from geovit.errors import GeovitError
from geovit.evaluation import evaluate_with_images as run_evaluation
from geovit.evaluation import (
    image_stats,
    majority_baseline,
    reliability_png,
    split_rows,
    split_sequences,
    stream_logits,
    summary_tables,
    write_metrics_json,
)
from geovit.explain import explain_image, render_explanation
from geovit.figures import figure_bytes
from geovit.fileio import write_text
from geovit.maps import cell_value_map, probability_map
from geovit.metrics import (
    CONCENTRATION_RADIUS_KM,
    HEADLINE_KM,
    distance_convention,
    pct,
    top_accuracy,
    within_km,
)

if TYPE_CHECKING:
    from geovit.predictor import Predictor

KINDS: dict[str, str] = {
    "confident_right": "Confident and right: top-1 correct, top-1 probability in the split's top "
    "quartile (highest first).",
    "confident_wrong": "Confident and wrong: top-1 wrong, top-1 probability in the split's top "
    "quartile (highest first).",
    "tight_cluster": "Tight cluster near the truth: top-1 wrong, but the probability mass on "
    f"cells within {CONCENTRATION_RADIUS_KM:g} km of the true location is in the split's top "
    "quartile (most mass first).",
    "diffuse": "Diffuse: entropy in the split's top quartile and top-1 probability at or below "
    "the median (highest entropy first).",
}


def example_stats(
    predictor: Predictor,
    rows: pd.DataFrame,
    *,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """geovit.evaluation.image_stats of every readable image of `rows` (one pass; use
    evaluate_with_images instead when the metrics are needed too)."""
    cells = predictor.cells
    lat = rows["latitude"].to_numpy(np.float64)
    lon = rows["longitude"].to_numpy(np.float64)
    labels = cells.assign(lat, lon)
    seq = split_sequences(rows)
    parts = [
        image_stats(cells, idx, logits, labels, lat, lon, seq)
        for idx, logits, _ in stream_logits(
            predictor, rows, batch_size=batch_size, progress=progress
        )
        if logits is not None
    ]
    if not parts:
        raise GeovitError(f"none of the {len(rows)} images could be read; check the image paths")
    return pd.concat(parts, ignore_index=True)


def pick_examples(stats: pd.DataFrame, per_kind: int = 2) -> dict[str, list[int]]:
    """Rows of `stats` chosen for each kind (see the module docstring); no image twice and, when
    stats has a sequence column, no two images of one sequence."""
    q = stats[["p1", "entropy", "mass_near_truth"]].quantile(0.75)
    wrong = ~stats["correct"]
    rules = {
        "confident_right": (stats["correct"] & (stats["p1"] >= q["p1"]), "p1"),
        "confident_wrong": (wrong & (stats["p1"] >= q["p1"]), "p1"),
        "tight_cluster": (
            wrong
            & (stats["mass_near_truth"] > 0)
            & (stats["mass_near_truth"] >= q["mass_near_truth"]),
            "mass_near_truth",
        ),
        "diffuse": (
            (stats["entropy"] >= q["entropy"]) & (stats["p1"] <= stats["p1"].median()),
            "entropy",
        ),
    }
    used: set[int] = set()
    seen: set[Any] = set()
    out = {}
    for kind, (mask, key) in rules.items():
        ranked = stats[mask & ~stats.index.isin(list(used))].sort_values(
            key, ascending=False, kind="stable"
        )
        if "sequence" in ranked:
            ranked = ranked[~ranked["sequence"].isin(list(seen))].drop_duplicates("sequence")
        out[kind] = [int(i) for i in ranked.index[:per_kind]]
        used.update(out[kind])
        if "sequence" in stats:
            seen.update(stats.loc[out[kind], "sequence"])
    return out


def cell_accuracy(stats: pd.DataFrame, num_cells: int) -> np.ndarray:
    """Top-1 accuracy per true cell (K,); NaN for cells with no image in the split."""
    inside = stats[stats["label"] >= 0]
    n = np.bincount(inside["label"], minlength=num_cells)
    hits = np.bincount(
        inside["label"], weights=inside["correct"].astype(float), minlength=num_cells
    )
    return np.divide(hits, n, out=np.full(num_cells, np.nan), where=n > 0)


def training_log(run_dir: str | Path) -> pd.DataFrame | None:
    """Per-epoch means of the newest logs/version_*/metrics.csv (Lightning's CSVLogger) in a run
    folder; None when there is none."""
    found = sorted(
        Path(run_dir).glob("logs/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime
    )
    if not found:
        return None
    log = pd.read_csv(found[-1])
    if "epoch" not in log or log.empty:
        return None
    return log.drop(columns=["step"], errors="ignore").groupby("epoch").mean()


def training_curves_png(log: pd.DataFrame) -> bytes:
    """Loss (train and val) and val top-1 accuracy per epoch, one panel each."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for col, name in (("train/loss_epoch", "train"), ("val/loss", "val")):
        if col in log and log[col].notna().any():
            ax_loss.plot(log.index, log[col], "o-", label=name)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    for col, name in (("train/acc", "train top-1"), ("val/acc1", "val top-1")):
        if col in log and log[col].notna().any():
            ax_acc.plot(log.index, log[col], "o-", label=name)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="cell accuracy")
    ax_acc.legend()
    return figure_bytes(fig)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@dataclass
class GalleryItem:
    kind: str
    caption: str
    heatmap: str  # data URIs
    prob_map: str


def _gallery(
    predictor: Predictor,
    rows: pd.DataFrame,
    stats: pd.DataFrame,
    picks: dict[str, list[int]],
    **occlusion: Any,
) -> list[GalleryItem]:
    cells = predictor.cells
    items = []
    for kind, chosen in picks.items():
        for i in chosen:
            s = stats.loc[i]
            row = rows.iloc[int(s["row"])]
            lat, lon = float(row["latitude"]), float(row["longitude"])
            in_cell = int(s["label"]) >= 0
            expl = explain_image(
                predictor,
                row["image"],
                lat=lat,
                lon=lon,
                target="true" if in_cell else "top",
                **occlusion,
            )
            top = int(s["top1"])
            truth = (
                f"true cell {cells.tokens[int(s['label'])]}"
                if in_cell
                else "truth outside every cell"
            )
            caption = (
                f"{row['id']}: {truth}; top-1 {cells.tokens[top]} {cells.names[top]} "
                f"p={s['p1']:.3f} ({'right' if s['correct'] else 'wrong'}); entropy "
                f"{s['entropy']:.2f} nats; mass within {CONCENTRATION_RADIUS_KM:g} km of the truth "
                f"{s['mass_near_truth']:.3f}"
            )
            pmap = probability_map(
                cells, expl.probs, lat=lat, lon=lon, log=True, title=str(row["id"])
            )
            items.append(
                GalleryItem(
                    kind,
                    caption,
                    _data_uri(figure_bytes(render_explanation(expl))),
                    _data_uri(figure_bytes(pmap.figure)),
                )
            )
    return items


def build_report(
    predictor: Predictor,
    manifest: pd.DataFrame,
    out_dir: str | Path,
    *,
    split: str = "test",
    metrics: dict[str, Any] | None = None,
    per_kind: int = 2,
    batch_size: int = 64,
    title: str = "GeoViT report",
    progress: Callable[[int], None] | None = None,
    run_dir: str | Path | None = None,
    synthetic: bool = False,
    **occlusion: Any,
) -> Path:
    """Write OUT/report.html (and OUT/metrics.json when the metrics are computed here).

    `metrics`: a metrics dict from an earlier `geovit evaluate` (skips that pass); `occlusion`:
    patch, stride, fill, fast, batch_size options for the gallery's heatmaps; `run_dir`: the
    training run folder whose logs give the training curves; `synthetic`: the data are a
    geovit synthetic world (the page then says so at the top).
    """
    out = Path(out_dir)
    rows = split_rows(manifest, split)
    if metrics is None:  # one pass over the split gives the metrics and the gallery's numbers
        metrics, stats = run_evaluation(
            predictor, manifest, split, batch_size=batch_size, progress=progress
        )
        write_metrics_json(metrics, out / "metrics.json")
    else:
        stats = example_stats(predictor, rows, batch_size=batch_size, progress=progress)
    acc = cell_accuracy(stats, len(predictor.cells))
    acc_map = cell_value_map(
        predictor.cells,
        acc,
        label="top-1 accuracy",
        vmin=0.0,
        vmax=1.0,
        title=f"Top-1 accuracy per true cell on {split} ({int(np.isfinite(acc).sum())} cells "
        "with images)",
    )
    reliability = _data_uri(reliability_png(metrics))
    gallery = _gallery(predictor, rows, stats, pick_examples(stats, per_kind), **occlusion)
    log = None if run_dir is None else training_log(run_dir)
    context = {
        "synthetic": synthetic,
        "baselines": majority_baseline(manifest, predictor.cells, split),
        "curves": None if log is None else _data_uri(training_curves_png(log)),
    }
    page = _page(
        title, metrics, reliability, _data_uri(figure_bytes(acc_map)), gallery, len(stats), context
    )
    return write_text(out / "report.html", page)


_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1200px; margin: 24px auto; padding: 0 16px;
       color: #222; }
h1 { font-size: 24px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; } th { background: #f2f2f2; }
img { max-width: 100%; } figure { margin: 0 0 28px; }
.pair { display: flex; gap: 12px; flex-wrap: wrap; align-items: flex-start; }
.pair img { flex: 1 1 480px; min-width: 0; }
figcaption { font-size: 16px; color: #222; margin-bottom: 6px; }
.note { color: #666; font-size: 13px; }
.warning { background: #fff3cd; border: 1px solid #e0b400; padding: 8px 12px; border-radius: 4px; }
"""


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<h3>{esc(title)}</h3><table><tr>{head}</tr>{body}</table>"


def _page(
    title: str,
    m: dict[str, Any],
    reliability: str,
    acc_map: str,
    gallery: list[GalleryItem],
    n_scanned: int,
    context: dict[str, Any],
) -> str:
    esc = html.escape
    b = context["baselines"]
    baselines = _table(
        "Baselines (same split)",
        ["", "top-1 cell accuracy", f"within {HEADLINE_KM:g} km"],
        [
            ["this model", pct(top_accuracy(m)), pct(within_km(m))],
            ["always the most common training cell", pct(b["majority_top1"]),
             pct(b[f"majority_within_{HEADLINE_KM:g}km"])],
            ["chance (uniform over cells)", pct(b["chance_top1"]), ""],
        ],
    )  # fmt: skip
    warning = (
        f"<p class='warning' id='synthetic-warning'>{esc(SYNTHETIC_NOTICE.replace('**', ''))}</p>"
        if context["synthetic"]
        else ""
    )
    curves = (
        f"<h2>Training curves</h2><img src='{context['curves']}' alt='training curves'>"
        if context["curves"]
        else ""
    )
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>",
        warning,
        f"<p class='note'>Generated {esc(time.strftime('%Y-%m-%d %H:%M'))} · split "
        f"{esc(str(m.get('split')))} · {n_scanned} images scanned for the gallery · "
        f"distances: {esc(distance_convention(m))}</p>",
        "<h2>Metrics</h2>",
        *(_table(*t) for t in summary_tables(m)),
        baselines,
        curves,
        "<h2>Reliability diagram</h2>",
        f"<img src='{reliability}' alt='reliability diagram' style='max-width:520px'>",
        "<h2>Accuracy per cell</h2>",
        f"<img src='{acc_map}' alt='map of cells coloured by top-1 accuracy'>",
        "<h2>Examples</h2><p class='note'>Left: occlusion heatmap for the true cell (the drop in "
        "its probability when a patch is covered; red = the model relies on it). Right: the "
        "probability over all cells (log colour scale), top cells outlined, truth in red.</p>",
    ]
    for kind, definition in KINDS.items():
        items = [g for g in gallery if g.kind == kind]
        parts.append(f"<h3>{esc(kind.replace('_', ' '))}</h3><p class='note'>{esc(definition)}</p>")
        if not items:
            parts.append("<p><em>No image of this split meets the definition.</em></p>")
        parts += [
            f"<figure><figcaption>{esc(g.caption)}</figcaption><div class='pair'>"
            f"<img src='{g.heatmap}' alt='occlusion heatmap'><img src='{g.prob_map}' "
            "alt='probability map'></div></figure>"
            for g in items
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
