"""CLI commands: demo."""

from geovit.cli._app import app  # noqa: F401
