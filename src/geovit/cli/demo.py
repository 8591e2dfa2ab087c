"""CLI command: `geovit demo` (the whole pipeline on a synthetic world, offline)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import console, friendly, track
from geovit.demo_settings import DemoSettings, stage_boundaries
from geovit.fileio import write_text


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("demo_run"), "--out", help="Folder for every artefact."),
    n: int = typer.Option(DemoSettings.n, help="Synthetic images to generate."),
    seed: int = typer.Option(DemoSettings.seed, help="Seed of the world and the training run."),
    epochs: int = typer.Option(
        DemoSettings.epochs, help="Training epochs; the three stages keep the design's proportions."
    ),
) -> None:
    """Run every stage on a synthetic world: synth, cells, train, calibrate, evaluate, explain,
    maps, report, model card and datasheet. Offline, a few minutes on a laptop CPU."""
    from geovit.demo import run_demo

    start = time.perf_counter()
    freeze, refreeze = stage_boundaries(epochs)  # the defaults' own schedule at the default
    settings = DemoSettings(
        n=n, seed=seed, epochs=epochs, freeze_epochs=freeze, cnn_refreeze_epoch=refreeze
    )
    result = run_demo(
        out, settings, say=lambda line: console.print(line, highlight=False), track=track
    )
    m, b = result.metrics, result.baselines
    top1 = m["cell_accuracy"]["all_images"]["top1"]
    w200 = m["distance"]["accuracy_within_km"]["200"]
    from rich.table import Table

    table = Table(title="Test split (synthetic world)")
    for col in ("", "model", "most common cell", "chance"):
        table.add_column(col)
    table.add_row(
        "top-1 cell accuracy", f"{top1:.1%}", f"{b['majority_top1']:.1%}", f"{b['chance_top1']:.1%}"
    )
    table.add_row("within 200 km", f"{w200:.1%}", f"{b['majority_within_200km']:.1%}", "")
    table.add_row("median error", f"{m['distance']['median_km']:,.0f} km", "", "")
    console.print(table)
    for name, path in result.files.items():
        console.print(f"  {name:12s} {path}")
    write_text(out / "baselines.json", json.dumps(b, indent=2))
    console.print(f"done in {time.perf_counter() - start:,.0f} s; open {result.files['report']}")
