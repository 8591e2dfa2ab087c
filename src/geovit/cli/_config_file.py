"""`--config FILE`: a command's options from a YAML or TOML file, written back after a run.

The file's keys are the command's option names (`lr`, `freeze-epochs` or `freeze_epochs`,
`cells`); they become click's default map, so flags given on the command line override them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click
import typer

from geovit.cli._common import fail, plain
from geovit.errors import GeovitError
from geovit.fileio import write_text

NOT_CONFIG = ("config_file", "resume", "overwrite")  # how to run, not what the run is


def _key(param: click.Parameter) -> str:
    """The name a config file uses for an option: its long flag without dashes."""
    long = [o for o in param.opts if o.startswith("--")]
    return long[0][2:].replace("-", "_") if long else str(param.name)


def read_config(path: Path) -> dict[str, Any]:
    """The mapping a YAML (.yaml/.yml) or TOML (.toml) file holds."""
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise GeovitError(f"--config {path}: cannot read it ({exc})") from None
    except Exception as exc:  # yaml.YAMLError, imported lazily
        raise GeovitError(f"--config {path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(values, dict):
        raise GeovitError(f"--config {path}: expected `option: value` lines, got {values!r}")
    return values


def _use_config(ctx: click.Context, param: click.Parameter, path: Path | None) -> Path | None:
    """Eager: turn the file into defaults before any other option is read."""
    if path is None:
        return None
    by_key = {_key(p): p.name for p in ctx.command.params if p.name not in NOT_CONFIG}
    try:
        values = read_config(path)
        given = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(given) - set(by_key))
        if unknown:
            raise GeovitError(
                f"--config {path}: unknown key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(sorted(by_key))}"
            )
    except GeovitError as exc:
        fail(exc)
    multiple = {p.name for p in ctx.command.params if getattr(p, "multiple", False)}
    defaults = {by_key[k]: v for k, v in given.items()}
    for name in multiple & set(defaults):  # `cells: a.parquet` as well as a list
        if not isinstance(defaults[name], list):
            defaults[name] = [defaults[name]]
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


CONFIG = typer.Option(
    None,
    "--config",
    is_eager=True,
    callback=_use_config,
    help="YAML or TOML file of option: value (e.g. OUT/config.yaml of an earlier run); "
    "flags given here override it.",
)


def write_config(ctx: click.Context, path: Path) -> Path:
    """The running command's effective options as YAML (`--config PATH` repeats them)."""
    import yaml

    values = {
        _key(p): plain(ctx.params[p.name])
        for p in ctx.command.params
        if p.name not in NOT_CONFIG and ctx.params.get(p.name) is not None
    }
    return write_text(path, yaml.safe_dump(values, sort_keys=False))
