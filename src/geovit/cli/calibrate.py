"""CLI command: `geovit calibrate` (a softmax temperature fitted on a held-out split)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from geovit.cli._app import app
from geovit.cli._common import (
    BATCH_SIZE,
    CHECKPOINT,
    DATA,
    THREADS,
    WORKERS,
    Split,
    console,
    dataset_options,
    err_console,
    friendly,
    load_split_manifest,
    set_threads,
    track,
)
from geovit.dataset_options import DatasetOptions
from geovit.errors import GeovitError
from geovit.fileio import ensure_writable


@app.command()
@friendly
@dataset_options
def calibrate(
    checkpoint: Path = CHECKPOINT,
    data: Path = DATA,
    split: Split = typer.Option(Split.val, help="Split to fit the temperature on (never test)."),
    check_split: Split = typer.Option(
        Split.val, help="Split on which ECE/NLL before and after are also reported."
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="Write the calibrated checkpoint here (the original is kept)."
    ),
    in_place: bool = typer.Option(
        False, "--in-place", help="Rewrite CHECKPOINT with the fitted temperature."
    ),
    max_images: int = typer.Option(
        20_000, help="Fit on a seeded sample of at most this many images."
    ),
    batch_size: int = BATCH_SIZE,
    workers: int = WORKERS,
    threads: int = THREADS,
    *,
    dataset: DatasetOptions,
) -> None:
    """Fit a softmax temperature and report ECE/NLL before and after on the fitted split and on
    --check-split; store it only with --out (a copy) or --in-place."""
    from geovit.calibration import fit_temperature, score_temperature
    from geovit.checkpoint import set_temperature
    from geovit.evaluation import split_logits, split_rows
    from geovit.predictor import Predictor

    if out is not None and in_place:
        raise GeovitError("give --out or --in-place, not both")
    if out is not None or in_place:
        ensure_writable((out or checkpoint).parent, "--in-place" if in_place else "--out")
    set_threads(threads, workers)
    predictor = Predictor.from_checkpoint(checkpoint)
    manifest, _ = load_split_manifest(data, dataset)
    kw = {"batch_size": batch_size, "workers": workers, "max_images": max_images}

    def logits_of(name: str):
        n = min(len(split_rows(manifest, name)), max_images)
        with track(f"logits of {name}", n) as advance:
            return split_logits(predictor, manifest, name, progress=advance, **kw)

    fit = fit_temperature(*logits_of(split))
    if fit.at_bound:
        err_console.print(
            f"[yellow]warning:[/] the best temperature lies at the search bound "
            f"({fit.temperature:.3g}), so the fit is unreliable: is the model trained?",
            highlight=False,
        )
    checks = [(f"{split} (fit)", fit)]
    if check_split != split:
        checks.append((check_split, score_temperature(*logits_of(check_split), fit.temperature)))
    table = Table(
        "split",
        "images",
        "NLL before",
        "NLL after",
        "ECE before",
        "ECE after",
        title=f"temperature T = {fit.temperature:.4f} (before: T = 1; ECE: 15 bins, top-1)",
        title_justify="left",
    )
    for name, f in checks:
        table.add_row(name, str(f.n_images), f"{f.nll_before:.4f}", f"{f.nll_after:.4f}",
                      f"{f.ece_before:.4f}", f"{f.ece_after:.4f}")  # fmt: skip
    console.print(table)
    for name, f in checks:
        if f.ece_after > f.ece_before:
            err_console.print(
                f"[yellow]warning:[/] the fitted temperature makes ECE worse on {name} "
                f"({f.ece_before:.4f} -> {f.ece_after:.4f}); it minimizes NLL, not ECE",
                highlight=False,
            )
    if out is None and not in_place:
        console.print(
            f"{checkpoint} unchanged: pass --out FILE for a calibrated copy or --in-place",
            highlight=False,
        )
        return
    written = set_temperature(checkpoint, fit.temperature, out=out)
    console.print(f"stored temperature {fit.temperature:.4f} in {written}", highlight=False)
