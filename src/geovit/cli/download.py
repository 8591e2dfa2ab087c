"""CLI command: `geovit download` (OSV-5M from the Hugging Face Hub, OSV-Mini-129k from Kaggle)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import console, friendly


class Dataset(StrEnum):
    osv5m = "osv5m"
    osv_mini = "osv-mini"


@app.command()
@friendly
def download(
    dataset: Dataset = typer.Argument(..., help="osv5m (Hugging Face Hub) or osv-mini (Kaggle)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to lay the dataset out in."),
    split: str = typer.Option("all", help="osv5m: train, test or all."),
    shards: str = typer.Option(None, help="osv5m: image zips to fetch, e.g. 00-04 (default all)."),
) -> None:
    """Download a dataset into the layout `geovit train --data OUT` reads (zips stay zipped).

    osv5m goes through the Hugging Face cache (resumable; HF_HUB_OFFLINE=1 uses it alone) and
    checks the free disk space first; osv-mini needs Kaggle credentials.
    """
    from geovit.hub import download_osv5m, download_osv_mini

    def log(line: str) -> None:
        console.print(line, highlight=False)

    if dataset == Dataset.osv5m:
        path = download_osv5m(out, split=split, shards=shards, log=log)
    else:
        path = download_osv_mini(out, log=log)
    console.print(f"next: geovit cells build {path} --out cells.parquet", highlight=False)
