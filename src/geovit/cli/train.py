"""CLI commands: train."""

from geovit.cli._app import app  # noqa: F401
