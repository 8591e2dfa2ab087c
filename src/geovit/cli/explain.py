"""CLI commands: explain."""

from geovit.cli._app import app  # noqa: F401
