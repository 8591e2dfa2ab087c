"""CLI commands: demo (the whole pipeline offline) and card (model card + datasheet)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import (
    CHECKPOINT,
    DATA,
    DATA_FORMAT,
    ENCODING,
    IMAGE_COL,
    IMAGE_TEMPLATE,
    LAT_COL,
    LON_COL,
    SEP,
    SPLIT_SEED,
    VAL_FRACTION,
    VAL_SPLIT,
    TableColumns,
    console,
    friendly,
    load_split_manifest,
    read_metrics,
    track,
)
from geovit.fileio import write_text
from geovit.metrics import HEADLINE_KM, median_km, top_accuracy, within_km


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("demo_run"), "--out", help="Folder for every artefact."),
    n: int = typer.Option(None, help="Synthetic images to generate [default: 6000]."),
    seed: int = typer.Option(None, help="Seed of the world and the training run [default: 0]."),
    epochs: int = typer.Option(
        None, help="Training epochs; the three stages keep the design's proportions [default: 6]."
    ),
) -> None:
    """Run every stage on a synthetic world: synth, cells, train, calibrate, evaluate, explain,
    maps, report, model card and datasheet. Offline, a few minutes on a laptop CPU."""
    from geovit.demo import DemoSettings, run_demo, stage_boundaries

    start = time.perf_counter()
    given = {"n": n, "seed": seed}
    if epochs is not None:
        freeze, refreeze = stage_boundaries(epochs)
        given |= {"epochs": epochs, "freeze_epochs": freeze, "cnn_refreeze_epoch": refreeze}
    settings = DemoSettings(**{k: v for k, v in given.items() if v is not None})
    result = run_demo(
        out, settings, say=lambda line: console.print(line, highlight=False), track=track
    )
    m, b = result.metrics, result.baselines
    top1, within = top_accuracy(m), within_km(m)
    from rich.table import Table

    table = Table(title="Test split (synthetic world)")
    for col in ("", "model", "most common cell", "chance"):
        table.add_column(col)
    table.add_row(
        "top-1 cell accuracy", f"{top1:.1%}", f"{b['majority_top1']:.1%}", f"{b['chance_top1']:.1%}"
    )
    majority = b[f"majority_within_{HEADLINE_KM:g}km"]
    table.add_row(f"within {HEADLINE_KM:g} km", f"{within:.1%}", f"{majority:.1%}", "")
    table.add_row("median error", f"{median_km(m):,.0f} km", "", "")
    console.print(table)
    for name, path in result.files.items():
        console.print(f"  {name:12s} {path}")
    write_text(out / "baselines.json", json.dumps(b, indent=2))
    console.print(f"done in {time.perf_counter() - start:,.0f} s; open {result.files['report']}")


@app.command()
@friendly
def card(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    out: Path = typer.Option(..., "--out", "-o", help="Folder for MODEL_CARD.md and DATASHEET.md."),
    metrics: Path = typer.Option(
        None, help="metrics.json of an earlier `geovit evaluate` (else the test split is scored)."
    ),
    name: str = typer.Option(None, help="Dataset name for the documents (default: the folder)."),
    fmt: str = DATA_FORMAT,
    image_col: str = IMAGE_COL,
    lat_col: str = LAT_COL,
    lon_col: str = LON_COL,
    image_template: str = IMAGE_TEMPLATE,
    sep: str = SEP,
    encoding: str = ENCODING,
    val_fraction: float = VAL_FRACTION,
    val_split: str = VAL_SPLIT,
    split_seed: int = SPLIT_SEED,
) -> None:
    """Write MODEL_CARD.md (Hugging Face format) and DATASHEET.md from a run's own numbers."""
    from geovit.card import describe_dataset, write_cards
    from geovit.checkpoint import load_checkpoint
    from geovit.evaluation import evaluate
    from geovit.predictor import Predictor

    columns = TableColumns(image_col, lat_col, lon_col, image_template, sep, encoding)
    manifest, report = load_split_manifest(data, fmt, val_fraction, val_split, split_seed, columns)
    ckpt = load_checkpoint(checkpoint)
    if metrics is None:
        scores = evaluate(Predictor.from_loaded(ckpt), manifest, "test")
    else:
        scores = read_metrics(metrics)
    info = describe_dataset(data, name or data.resolve().name)
    paths = write_cards(out, ckpt, scores, manifest, report.lines(), info)
    for path in paths:
        console.print(f"wrote {path}")
