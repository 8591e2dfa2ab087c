"""CLI command: `geovit serve` (HTTP API + web page)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import typer

from geovit.cli._app import app
from geovit.cli._common import console, err_console, friendly, inference_options


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@app.command()
@friendly
@inference_options
def serve(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", "-c", help="checkpoint (.pt / .ckpt) or exported model.onnx"
    ),
    host: str = typer.Option("127.0.0.1", help="address to bind (0.0.0.0 exposes it)"),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port"),
    top_k: int = typer.Option(5, "--top-k", min=1, help="cells returned per prediction"),
    max_mb: float = typer.Option(20.0, "--max-mb", min=0.001, help="largest upload, megabytes"),
    max_megapixels: float = typer.Option(
        40.0, "--max-megapixels", min=0.001, help="largest image, megapixels (decompression bombs)"
    ),
    *,
    inference: dict[str, Any],
) -> None:
    """Serve the web page (/) and the HTTP API (/predict, /explain, /cells, /health, /docs)."""
    from geovit.onnxmodel import load_predictor
    from geovit.serve import create_app, run

    predictor = load_predictor(checkpoint, **inference)
    web_app = create_app(
        predictor,
        max_bytes=int(max_mb * 1e6),
        max_pixels=int(max_megapixels * 1e6),
        top_k=top_k,
    )
    if not _is_loopback(host):
        err_console.print(
            f"[yellow]warning:[/] binding {host}: anyone who can reach this machine can use the "
            "model; there is no authentication"
        )
    console.print(
        f"geovit: {len(predictor.cells)} cells from {checkpoint}; open http://{host}:{port}/ "
        "(API docs at /docs; that page loads Swagger UI from a CDN, the main page is offline)"
    )
    run(web_app, host=host, port=port)
