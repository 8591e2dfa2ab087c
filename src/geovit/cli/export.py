"""CLI command: `geovit export` (ONNX file or safetensors folder)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import console, friendly


class ExportFormat(StrEnum):
    onnx = "onnx"
    safetensors = "safetensors"


@app.command()
@friendly
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="checkpoint (.pt / .ckpt)"),
    format: ExportFormat = typer.Option(
        ExportFormat.onnx, "--format", help="onnx, or safetensors (a folder: no pickle)"
    ),
    out: Path = typer.Option(
        Path("model.onnx"), "--out", "-o", help="file to write (a folder for safetensors)"
    ),
    opset: int | None = typer.Option(None, help="ONNX opset (default: the exporter's)"),
) -> None:
    """Export the classifier to one ONNX file (dynamic batch) with the cells and preprocessing
    embedded in its metadata (`geovit predict --onnx` and `geovit serve` run it with
    onnxruntime), or to a safetensors folder (model.safetensors, config.json, cells.parquet)
    any command loads."""
    from geovit.export import export_folder, export_onnx

    if format == ExportFormat.safetensors:
        folder = export_folder(checkpoint, out.with_suffix("") if out.suffix == ".onnx" else out)
        console.print(f"wrote {folder}/: {', '.join(sorted(p.name for p in folder.iterdir()))}")
        return
    path = export_onnx(checkpoint, out, opset=opset)
    size_mb = path.stat().st_size / 1e6
    console.print(f"wrote {path} ({size_mb:.1f} MB, cells and preprocessing embedded)")
