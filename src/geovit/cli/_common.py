"""Shared CLI plumbing: one rich console and one-line errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from geovit.errors import GeovitError


@dataclass(frozen=True)
class TableColumns:
    """The --image-col/--lat-col/--lon-col/--image-template/--sep/--encoding choices
    (load_manifest's names)."""

    image_col: str | None = None
    lat_col: str | None = None
    lon_col: str | None = None
    image_template: str | None = None
    sep: str | None = None
    encoding: str | None = None


if TYPE_CHECKING:
    import pandas as pd

    from geovit.data.manifest import ManifestReport

console = Console()
err_console = Console(stderr=True)


# Options every command that reads a dataset shares: the val hold-out must be the same one
# that `cells build` and `train` used, or validation images leak into the cells.
CHECKPOINT = typer.Option(..., "--checkpoint", "-c", help="model.pt, best.ckpt or last.ckpt.")
DATA = typer.Option(..., "--data", "-d", help="Dataset folder or table (any format geovit reads).")
DATA_FORMAT = typer.Option("auto", "--format", help="Dataset layout (auto-detected by default).")
VAL_FRACTION = typer.Option(0.1, help="Share of train records held out for val (as in training).")
VAL_SPLIT = typer.Option(
    "sequence", help="sequence, random or spatial val hold-out (as in training)."
)
SPLIT_SEED = typer.Option(0, help="Seed of the val hold-out (as in training).")
BATCH_SIZE = typer.Option(64, "--batch-size", "-b", help="Images per forward pass.")
WORKERS = typer.Option(0, "--workers", "-w", help="DataLoader worker processes.")
THREADS = typer.Option(
    None,
    "--threads",
    min=1,
    help="torch intra-op threads (default: usable cores // (devices x (workers + 1)), >= 1).",
)
IMAGE_COL = typer.Option(None, "--image-col", help="Table column of image paths (tables only).")
LAT_COL = typer.Option(None, "--lat-col", help="Table column of latitudes (tables only).")
LON_COL = typer.Option(None, "--lon-col", help="Table column of longitudes (tables only).")
IMAGE_TEMPLATE = typer.Option(
    None,
    "--image-template",
    help='Image path built from table columns, e.g. "images/{id}.jpg" (tables only).',
)
CACHE_DIR = typer.Option(
    None,
    "--cache-dir",
    help="Local cache for --data s3://... shards (default: $GEOVIT_CACHE or ~/.cache/geovit).",
)
SEP = typer.Option(None, "--sep", help="CSV field separator, e.g. ';' (default: detected).")
ENCODING = typer.Option(None, "--encoding", help="CSV text encoding, e.g. latin-1 (default utf-8).")


def default_threads(workers: int, processes: int = 1) -> int:
    """The usable cores shared by each training process and its DataLoader workers.

    torch's default (every core for intra-op work) oversubscribes a machine whose workers decode
    images at the same time; on a shared 2-core machine it ran ~3x slower than 1 thread.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // (max(processes, 1) * (max(workers, 0) + 1)))


def set_threads(threads: int | None, workers: int = 0, processes: int = 1) -> int:
    """Set torch's intra-op threads (`--threads`, else default_threads); returns the count.

    OMP_NUM_THREADS is set too, so Lightning's DDP launcher keeps the choice in every process.
    """
    import torch

    n = threads or default_threads(workers, processes)
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def load_split_manifest(
    data: Path,
    fmt: str,
    val_fraction: float,
    val_split: str,
    split_seed: int,
    columns: TableColumns | None = None,
    cache_dir: Path | None = None,
    **options: Any,
) -> tuple[pd.DataFrame, ManifestReport]:
    """Read DATA with the val hold-out of training; the report's lines go to stderr.

    `options` go to load_manifest as they are (e.g. need_images, test_fraction). Shards
    (`geovit shards`, a folder or an object-store URL mirrored in `cache_dir`) carry their
    table and the hold-out they were written with.
    """
    from geovit.data.manifest import ManifestReport, load_manifest
    from geovit.data.shards import open_shards, read_shard_manifest

    if (root := open_shards(data, cache_dir)) is not None:
        manifest = read_shard_manifest(root)
        err_console.print(f"shards {data}: {len(manifest):,} images, hold-out as written")
        report = ManifestReport(source=str(data), fmt="shards", n_read=len(manifest))
        report.splits = manifest["split"].value_counts().to_dict()
        return manifest, report

    manifest, report = load_manifest(
        data,
        fmt=fmt,
        val_fraction=val_fraction,
        val_split=val_split,
        seed=split_seed,
        **dataclasses.asdict(columns or TableColumns()),
        **options,
    )
    for line in report.lines():
        err_console.print(line, highlight=False)
    return manifest, report


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics.json written by `geovit evaluate`."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GeovitError(
            f"--metrics {path}: cannot read it as JSON ({exc}); write it with geovit evaluate"
        ) from None


@contextmanager
def track(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on stderr; yields `advance(n)` for the pipeline's
    `progress=` callbacks."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a GeovitError into one red line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GeovitError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(2)

    return wrapper


def main() -> None:
    from geovit.cli._app import app

    app()
