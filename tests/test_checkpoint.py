"""Checkpoint files: round trip, weights_only loading, atomic writes, clear failures."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from geovit.cells import CellPartition
from geovit.checkpoint import (
    CONTRACT_KEYS,
    LoadedCheckpoint,
    load_checkpoint,
    save_checkpoint,
    set_temperature,
)
from geovit.errors import GeovitError
from geovit.model import GeoViT, model_config


@pytest.fixture(scope="module")
def cells() -> CellPartition:
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.normal(40, 1, 60), rng.normal(-10, 1, 60), rng.normal(55, 1, 60)])
    lon = np.concatenate([rng.normal(-100, 1, 60), rng.normal(20, 1, 60), rng.normal(90, 1, 60)])
    names = np.array(["Ames", "Lusaka", "Tomsk"]).repeat(60)
    return CellPartition.build(lat, lon, t1=40, t2=5, names=names)


@pytest.fixture(scope="module")
def model(cells) -> GeoViT:
    torch.manual_seed(0)
    return GeoViT(model_config("small", len(cells), image_size=64)).eval()


def test_round_trip_is_exact(tmp_path, model, cells):
    path = save_checkpoint(tmp_path / "m.pt", model, cells, train={"epochs": 3, "val": {"a": 0.5}})
    raw = torch.load(path, weights_only=True)  # plain data only: no code runs on load
    assert set(CONTRACT_KEYS) <= set(raw)
    ck = load_checkpoint(path)
    assert isinstance(ck, LoadedCheckpoint) and not ck.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k]), k
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), model(x), rtol=0, atol=0)
    for field in ("cell_ids", "levels", "counts", "centroid_lat", "centroid_lon", "names"):
        np.testing.assert_array_equal(getattr(ck.cells, field), getattr(cells, field))
    assert ck.config == model.config
    assert (ck.mean, ck.std) == model.normalization
    assert ck.image_size == 64 and ck.temperature == 1.0
    assert ck.train == {"epochs": 3, "val": {"a": 0.5}}


def test_rebuild_never_downloads_and_resave_keeps_fields(tmp_path, model, cells):
    model.config.pretrained = True  # as if trained from ImageNet weights
    try:
        path = save_checkpoint(tmp_path / "m.pt", model, cells, temperature=1.7)
    finally:
        model.config.pretrained = False
    ck = load_checkpoint(path)  # offline here: would fail if it tried to fetch weights
    assert ck.config.pretrained is False and ck.raw["model_config"]["pretrained"] is True
    again = save_checkpoint(tmp_path / "copy.pt", ck)
    ck2 = load_checkpoint(again)
    assert ck2.temperature == 1.7 and ck2.train == ck.train
    assert list(ck2.cells.tokens) == list(cells.tokens)


def test_writes_are_atomic_and_overwrite(tmp_path, model, cells):
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, cells)
    save_checkpoint(path, model, cells, temperature=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temp files left behind
    assert load_checkpoint(path).temperature == 2.0


def test_failed_write_leaves_old_file_intact(tmp_path, model, cells, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", model, cells)
    before = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, cells, temperature=3.0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_set_temperature(tmp_path, model, cells):
    path = save_checkpoint(tmp_path / "m.pt", model, cells)
    set_temperature(path, 1.35)
    ck = load_checkpoint(path)
    assert ck.temperature == 1.35
    assert all(torch.equal(v, ck.model.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(GeovitError, match="> 0"):
        set_temperature(path, 0.0)


def test_bad_files_fail_with_one_clear_error(tmp_path, model, cells):
    with pytest.raises(GeovitError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(GeovitError, match="not a loadable geovit checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "foreign.pt")
    with pytest.raises(GeovitError, match="missing model_config"):
        load_checkpoint(tmp_path / "foreign.pt")
    # pickled objects (code) are refused by weights_only loading
    with open(tmp_path / "pickled.pt", "wb") as f:
        pickle.dump({"model_config": GeovitError("x")}, f)
    with pytest.raises(GeovitError, match="not a loadable"):
        load_checkpoint(tmp_path / "pickled.pt")
    other = CellPartition.build(
        np.array([1.0] * 30), np.array([2.0] * 30), t1=100, t2=5
    )  # 1 class, model has more
    with pytest.raises(GeovitError, match="classes"):
        save_checkpoint(tmp_path / "x.pt", model, other)


def test_edited_weights_are_reported(tmp_path, model, cells):
    path = save_checkpoint(tmp_path / "m.pt", model, cells)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["head.weight"] = torch.zeros(1, 1)
    torch.save(raw, path)
    with pytest.raises(GeovitError, match="do not fit"):
        load_checkpoint(path)


def test_hub_backbone_checkpoint_loads_without_the_hub(tmp_path, cells, monkeypatch, request):
    """A checkpoint naming an hf-hub: backbone rebuilds from itself: no Hub, no cache needed.

    The Hub is Hugging Face's own client in offline mode over a cache laid out here (a timm
    config.json for a resnet18); once the model is built, the cache goes and sockets refuse.
    """
    import json
    import shutil

    import huggingface_hub.constants

    name, commit = "geovit-test/tiny-resnet", "0" * 40
    cache = tmp_path / "hub"
    repo = cache / f"models--{name.replace('/', '--')}"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    config = {"architecture": "resnet18", "num_classes": 1000,
              "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}  # fmt: skip
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    torch.manual_seed(0)
    hub_model = GeoViT(
        model_config("small", len(cells), cnn=f"hf-hub:{name}", image_size=64)
    ).eval()
    assert hub_model.normalization == ((0.5,) * 3, (0.25,) * 3)  # the Hub config's own
    path = save_checkpoint(tmp_path / "m.pt", hub_model, cells)
    shutil.rmtree(cache)
    request.getfixturevalue("offline")  # from here on any connection fails the test
    loaded = load_checkpoint(path)
    assert loaded.config.cnn == f"hf-hub:{name}"
    assert (loaded.mean, loaded.std) == hub_model.normalization
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), hub_model(x), rtol=0, atol=0)
    resaved = load_checkpoint(save_checkpoint(tmp_path / "again.pt", loaded))
    assert resaved.model.normalization == hub_model.normalization


def test_truncated_checkpoint_says_so_with_its_size(tmp_path, model, cells):
    """A kill mid-copy or a full disk leaves half a file: name that, not a generic failure."""
    path = save_checkpoint(tmp_path / "m.pt", model, cells)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(GeovitError, match=rf"truncated/incomplete \({len(data) // 3:,} bytes\)"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(GeovitError, match=r"truncated/incomplete \(0 bytes\)"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("temperature", float("nan"), "temperature"),
        ("temperature", -1.0, "temperature"),
        ("std", [0.2, 0.0, 0.2], "std"),
        ("mean", [0.5, float("inf"), 0.5], "mean"),
        ("image_size", 0, "image_size"),
    ],
)
def test_malformed_values_are_rejected_on_load(tmp_path, model, cells, key, value, words):
    """A NaN temperature used to load fine and turn every probability into NaN."""
    path = save_checkpoint(tmp_path / "m.pt", model, cells)
    raw = torch.load(path, weights_only=True)
    raw[key] = value
    torch.save(raw, path)
    with pytest.raises(GeovitError, match=words):
        load_checkpoint(path)
