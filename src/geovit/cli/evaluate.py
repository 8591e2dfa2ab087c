"""CLI commands: evaluate."""

from geovit.cli._app import app  # noqa: F401
