"""CLI commands: `geovit cells build` and `geovit cells show`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from geovit.cells import T1_DEFAULT, T2_DEFAULT, CellPartition
from geovit.cli._app import app
from geovit.cli._common import console, dataset_options, friendly, load_split_manifest
from geovit.dataset_options import DatasetOptions
from geovit.errors import GeovitError
from geovit.fileio import ensure_writable
from geovit.s2 import MAX_LEVEL

cells_app = typer.Typer(
    help="Adaptive S2 cells: the classes the model predicts.", no_args_is_help=True
)
app.add_typer(cells_app, name="cells")


def print_summary(cells: CellPartition, title: str) -> None:
    """Rich tables of CellPartition.summary(): totals, then the level histogram."""
    s = cells.summary()
    share = s["points_dropped"] / s["points"] if s["points"] else 0.0
    totals = Table(title=title, show_header=False, title_justify="left")
    totals.add_row("classes", f"{s['classes']:,}")
    totals.add_row("points", f"{s['points']:,}")
    totals.add_row("kept", f"{s['points_kept']:,}")
    totals.add_row("dropped (cells < t2)", f"{s['points_dropped']:,} ({share:.1%})")
    totals.add_row("t1 / t2", f"{s['t1']} / {s['t2']}")
    totals.add_row("levels searched", f"{s['min_level']}..{s['max_level']}")
    totals.add_row("smallest cell", f"{s['smallest_km2']:,.2f} km²")
    totals.add_row("largest cell", f"{s['largest_km2']:,.0f} km²")
    console.print(totals)
    histogram = Table("level", "classes", "", title="cells per level", title_justify="left")
    peak = max(s["levels"].values())
    for level, count in s["levels"].items():
        histogram.add_row(str(level), f"{count:,}", "█" * max(1, round(30 * count / peak)))
    console.print(histogram)


@cells_app.command("build")
@friendly
@dataset_options
def build(
    data: Path = typer.Argument(..., help="Dataset folder or table (any format geovit reads)."),
    t1: int = typer.Option(T1_DEFAULT, "--t1", help="Split cells holding more points than this."),
    t2: int = typer.Option(T2_DEFAULT, "--t2", help="Drop leaf cells holding fewer points."),
    out: Path = typer.Option(Path("cells.parquet"), "--out", "-o", help="Partition file to write."),
    min_level: int = typer.Option(0, "--min-level", help="Split every cell down to this level."),
    max_level: int = typer.Option(MAX_LEVEL, "--max-level", help="Never split below this level."),
    every_point: bool = typer.Option(
        False, "--all", help="Partition every point (no val/test held out): not for training."
    ),
    *,
    dataset: DatasetOptions,
) -> None:
    """Build the adaptive cells from the train split of DATA and write them to --out.

    DATA may hold coordinates only (no images): a table with latitude/longitude columns.
    """
    # --all holds nothing out, and partitions the rows of every split the data has
    no_holdout = {"val_fraction": 0.0, "test_fraction": 0.0} if every_point else {}
    ensure_writable(out.parent)
    manifest, _ = load_split_manifest(data, dataset, need_images=False, **no_holdout)
    train = manifest if every_point else manifest[manifest["split"] == "train"]
    if train.empty:
        raise GeovitError(f"{data} has no train records to build cells from; check its splits")
    cells = CellPartition.build(
        train["latitude"].to_numpy(),
        train["longitude"].to_numpy(),
        t1=t1,
        t2=t2,
        min_level=min_level,
        max_level=max_level,
        names=train["city"].to_numpy() if "city" in train.columns else None,
    )
    path = cells.save(out)
    print_summary(cells, f"cells written to {path}")


@cells_app.command("show")
@friendly
def show(path: Path = typer.Argument(..., help="A cells.parquet file.")) -> None:
    """Print the summary of an existing partition file."""
    print_summary(CellPartition.load(path), str(path))
