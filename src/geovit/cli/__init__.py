"""Command-line interface: thin wrappers that parse options and call the pipeline modules.

One file per command, named after it (`cells` and `weights` hold their sub-commands)."""

from geovit.cli import (  # noqa: F401  (importing registers the commands)
    calibrate,
    card,
    cells,
    demo,
    download,
    evaluate,
    explain,
    export,
    index,
    map,
    predict,
    push,
    report,
    serve,
    shards,
    synth,
    train,
    weights,
)
from geovit.cli._app import app
from geovit.cli._common import main

__all__ = ["app", "main"]
