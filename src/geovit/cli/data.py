"""CLI commands: data."""

from geovit.cli._app import app  # noqa: F401
