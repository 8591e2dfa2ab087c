"""Shared CLI plumbing: one rich console and one-line errors."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from geovit.dataset_options import FORMATS, SPLITS, VAL_SPLITS, DatasetOptions
from geovit.errors import GeovitError
from geovit.points import DEFAULT_POINT, POINTS

if TYPE_CHECKING:
    import pandas as pd

    from geovit.data.manifest import ManifestReport

console = Console()
err_console = Console(stderr=True)


CHECKPOINT = typer.Option(..., "--checkpoint", "-c", help="model.pt, best.ckpt or last.ckpt.")
DATA = typer.Option(..., "--data", "-d", help="Dataset folder or table (any format geovit reads).")
BATCH_SIZE = typer.Option(64, "--batch-size", "-b", help="Images per forward pass.")
WORKERS = typer.Option(0, "--workers", "-w", help="DataLoader worker processes.")
THREADS = typer.Option(
    None,
    "--threads",
    min=1,
    help="torch intra-op threads (default: usable cores // (devices x (workers + 1)), >= 1).",
)


def choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    """An owner's closed choices as an Enum: --help lists them and a typo fails naming them."""
    return StrEnum(name, {v: v for v in values})


Layout = choices("Layout", FORMATS)
ValSplit = choices("ValSplit", VAL_SPLITS)
Split = choices("Split", SPLITS)


def grouped(name: str, params: Sequence[inspect.Parameter], build: Callable[..., Any]):
    """Decorator: list `params` among a command's own options (so --help shows each one) and
    hand them to the command as one object, `name=build(**their values)`.

    Typer has no option groups; this keeps one definition of a group for every command using it.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name != name]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {p.name: kwargs.pop(p.name) for p in params}
            return fn(**kwargs, **{name: build(**values)})

        command.__signature__ = sig.replace(parameters=[*own, *params])  # type: ignore[attr-defined]
        command.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != name}
        return command

    return decorate


def option(name: str, annotation: Any, info: Any) -> inspect.Parameter:
    """One generated command option (`info` is a typer.Option)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=annotation)  # fmt: skip


def plain(value: Any) -> Any:
    """A CLI value as the plain value the pipeline stores (an Enum's str, a Path's str; a
    repeated option's list of them)."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


_D = DatasetOptions
# The options every command that reads a dataset shares: the val hold-out must be the one that
# `cells build` and `train` used, or validation images leak into the cells.
DATASET_OPTIONS = (
    option("layout", Layout, typer.Option(_D.layout, help="Dataset layout (auto-detected).")),
    option("val_fraction", float, typer.Option(
        _D.val_fraction, help="Share of train records held out for val (as in training).")),
    option("val_split", ValSplit, typer.Option(
        _D.val_split, help="How val is held out: whole drives, random images or spatial blocks "
        "(as in training).")),
    option("split_seed", int, typer.Option(_D.split_seed,
                                           help="Seed of the val hold-out (as in training).")),
    option("image_col", str | None, typer.Option(
        _D.image_col, help="Table column of image paths (tables only).")),
    option("lat_col", str | None, typer.Option(
        _D.lat_col, help="Table column of latitudes (tables only).")),
    option("lon_col", str | None, typer.Option(
        _D.lon_col, help="Table column of longitudes (tables only).")),
    option("image_template", str | None, typer.Option(
        _D.image_template,
        help='Image path built from table columns, e.g. "images/{id}.jpg" (tables only).')),
    option("sep", str | None, typer.Option(
        _D.sep, help="CSV field separator, e.g. ';' (default: detected).")),
    option("encoding", str | None, typer.Option(
        _D.encoding, help="CSV text encoding, e.g. latin-1 (default utf-8).")),
)  # fmt: skip
dataset_options = grouped(
    "dataset", DATASET_OPTIONS, lambda **v: DatasetOptions(**{k: plain(x) for k, x in v.items()})
)


Point = choices("Point", POINTS)
# How predictions are made (Predictor.configure's arguments): predict, evaluate and serve.
INFERENCE_OPTIONS = (
    option("point", Point, typer.Option(
        Point(DEFAULT_POINT), help="Best-guess point estimator (geovit.points).")),
    option("index", Path | None, typer.Option(
        None, help="Gallery from `geovit index` for --point retrieval (same checkpoint).")),
    option("tta", int, typer.Option(
        1, min=1, help="Average the softmax over this many test-time crops.")),
)  # fmt: skip
inference_options = grouped(
    "inference", INFERENCE_OPTIONS, lambda **v: {k: plain(x) for k, x in v.items()}
)
CACHE_DIR = typer.Option(
    None,
    "--cache-dir",
    help="Local cache for --data s3://... shards (default: $GEOVIT_CACHE or ~/.cache/geovit).",
)


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
    data: Path, dataset: DatasetOptions, cache_dir: Path | None = None, **options: Any
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

    manifest, report = load_manifest(data, **{**dataset.manifest_kwargs(), **options})
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
            fail(exc)

    return wrapper


def fail(exc: GeovitError) -> NoReturn:
    """One red line on stderr and exit status 2."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    from geovit.cli._app import app

    app()
