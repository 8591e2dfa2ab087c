"""Shared fixtures: one tiny synthetic world (and its cells) for every test that needs data."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_WORLD = {"n": 400, "seed": 0, "image_size": (120, 80)}
TINY_CELLS = {"t1": 40, "t2": 5}


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 400-image synthetic world (120x80, seed 0) in the OSV-5M layout."""
    from geovit.data.synth import generate_world

    return generate_world(tmp_path_factory.mktemp("data") / "world", **TINY_WORLD)


@pytest.fixture(scope="session")
def tiny_cells(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cells.parquet built from the tiny world's train split (t1=40, t2=5)."""
    from geovit.cells import CellPartition
    from geovit.data.manifest import load_manifest

    manifest, _ = load_manifest(tiny_world)
    train = manifest[manifest["split"] == "train"]
    cells = CellPartition.build(
        train["latitude"].to_numpy(),
        train["longitude"].to_numpy(),
        names=train["city"].to_numpy(),
        **TINY_CELLS,
    )
    return cells.save(tmp_path_factory.mktemp("cells") / "cells.parquet")
