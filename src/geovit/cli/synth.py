"""CLI command: `geovit synth` (the synthetic world of the demo and the tests)."""

from __future__ import annotations

from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import console, friendly, track


@app.command()
@friendly
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the world to (OSV-5M layout)."),
    n: int = typer.Option(6000, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="World seed: the same seed gives identical files."),
    image_size: str = typer.Option("240x160", "--image-size", help="WIDTHxHEIGHT, 3:2."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of held-out drives."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
) -> None:
    """Generate a synthetic street-scene world in 10 western US states (offline, deterministic)."""
    from geovit.data.synth import generate_world, parse_image_size, world_info

    size = parse_image_size(image_size)
    with track("drawing", n) as advance:
        path = generate_world(
            out,
            n=n,
            seed=seed,
            image_size=size,
            test_fraction=test_fraction,
            overwrite=overwrite,
            progress=advance,
        )
    counts = world_info(path)["counts"]
    states = ", ".join(f"{name} {k}" for name, k in counts["per_state"].items())
    console.print(
        f"synthetic world: {counts['train']} train + {counts['test']} test images "
        f"({size[0]}x{size[1]}), {counts['sequences']} sequences, {counts['rural']} rural"
    )
    console.print(f"per state: {states}", highlight=False)
    console.print(f"wrote {path.resolve()}")
