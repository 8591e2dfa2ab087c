"""The Typer application every command module registers on."""

import typer

app = typer.Typer(
    name="geovit",
    help="Learn where a street-level photo was taken: S2 cells, GeoViT training, evaluation, maps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the geovit version."""
    from geovit import __version__

    print(__version__)


def _print_version(value: bool) -> None:
    if value:
        from geovit import __version__

        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the geovit version and exit.",
    ),
) -> None:
    """Learn where a street-level photo was taken: S2 cells, GeoViT training, evaluation, maps."""
