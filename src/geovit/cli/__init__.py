"""Command-line interface: thin wrappers that parse options and call the pipeline modules."""

from geovit.cli import (  # noqa: F401  (importing registers the commands)
    cells,
    data,
    demo,
    download,
    evaluate,
    explain,
    gallery,
    push,
    serve,
    shards,
    train,
    weights,
)
from geovit.cli._app import app
from geovit.cli._common import main

__all__ = ["app", "main"]
