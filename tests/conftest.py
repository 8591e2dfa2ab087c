"""Shared fixtures: one tiny synthetic world, its cells, and a random-init model over them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

TINY_WORLD = {"n": 400, "seed": 0, "image_size": (120, 80)}
TINY_CELLS = {"t1": 40, "t2": 5}
TINY_IMAGE_SIZE = 64  # the small preset's layout at a tiny input: fast on CPU


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


@pytest.fixture(scope="session")
def tiny_image_size() -> int:
    """The input size `tiny_checkpoint` was built for (tests check what the app reports)."""
    return TINY_IMAGE_SIZE


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.pt: the small preset at 64 px with random weights (seed 0) over `tiny_cells`.

    Shared by the whole session: a test that changes a checkpoint (set_temperature, calibrate)
    must work on its own copy (shutil.copy into tmp_path).
    """
    import torch

    from geovit.cells import CellPartition
    from geovit.checkpoint import save_checkpoint
    from geovit.model import GeoViT, model_config

    cells = CellPartition.load(tiny_cells)
    torch.manual_seed(0)
    model = GeoViT(model_config("small", len(cells), image_size=TINY_IMAGE_SIZE))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model, cells)


@pytest.fixture(scope="session")
def hybrid_checkpoint(tiny_cells: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_checkpoint` with the hybrid cell + offset head, its offset layer random (trained
    ones start at zero: every offset would be the centroid)."""
    import torch

    from geovit.cells import CellPartition
    from geovit.checkpoint import save_checkpoint
    from geovit.model import GeoViT, model_config

    cells = CellPartition.load(tiny_cells)
    torch.manual_seed(0)
    model = GeoViT(model_config("small", len(cells), image_size=TINY_IMAGE_SIZE, head="hybrid"))
    torch.nn.init.normal_(model.head.offset.weight, std=0.05)
    torch.nn.init.normal_(model.head.offset.bias, std=0.3)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt_hybrid") / "model.pt", model, cells)


@pytest.fixture(scope="session", params=["cnn", "vit"])
def baseline_checkpoint(
    request: pytest.FixtureRequest, tiny_cells: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """model.pt of each baseline arch (the small preset's CNN or ViT alone), like
    `tiny_checkpoint`: tests taking it run once per arch."""
    import torch

    from geovit.cells import CellPartition
    from geovit.checkpoint import save_checkpoint
    from geovit.model import GeoViT, model_config

    cells = CellPartition.load(tiny_cells)
    torch.manual_seed(0)
    cfg = model_config("small", len(cells), arch=request.param, image_size=TINY_IMAGE_SIZE)
    folder = tmp_path_factory.mktemp(f"ckpt_{request.param}")
    return save_checkpoint(folder / "model.pt", GeoViT(cfg), cells)


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test (figures must render offline)."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture()
def ghostscript_standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A logging `gs` first on PATH (Pillow re-detects it): returns the log file it appends to.

    An upload or dataset file in EPS format must never reach it.
    """
    from PIL import EpsImagePlugin

    log = tmp_path / "gs_calls.log"
    script = tmp_path / "bin" / "gs"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    return log


def eps_bytes() -> bytes:
    """A small valid EPS file (Pillow writes it without Ghostscript)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="EPS")
    return buf.getvalue()
