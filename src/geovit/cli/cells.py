"""CLI commands: cells."""

from geovit.cli._app import app  # noqa: F401
