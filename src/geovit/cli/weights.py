"""CLI command: `geovit weights import` (positional-layout weight files -> timm-keyed files)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import console, friendly

weights_app = typer.Typer(help="Backbone weight files for --cnn-weights/--vit-weights.",
                          no_args_is_help=True)  # fmt: skip
app.add_typer(weights_app, name="weights")


@weights_app.command("import")
@friendly
def import_weights(
    file: Path = typer.Argument(..., help="A .pth/.safetensors state dict in another key layout."),
    cnn: str = typer.Option(..., "--cnn", help="The timm model whose tensors it holds, in order."),
    out: Path = typer.Option(..., "--out", "-o", help="The .safetensors file to write."),
) -> None:
    """Rename FILE's tensors to timm CNN's keys by position (count, shape and kind checked)."""
    from safetensors import safe_open

    from geovit.weights import import_positional

    path = import_positional(file, cnn, out)
    with safe_open(str(path), "pt") as f:
        n = len(list(f.keys()))
    console.print(f"{path}: {n} tensors with {cnn}'s timm keys; train with --cnn {cnn} "
                  f"--cnn-weights {path}", highlight=False)  # fmt: skip
