"""CLI commands: serve."""

from geovit.cli._app import app  # noqa: F401
