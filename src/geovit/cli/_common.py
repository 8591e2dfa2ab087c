"""Shared CLI plumbing: one rich console and one-line errors."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

from geovit.errors import GeovitError

console = Console()
err_console = Console(stderr=True)


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
