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
