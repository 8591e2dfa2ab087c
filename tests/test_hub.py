"""Hub models, dataset downloads and push, through huggingface_hub's and kagglehub's own
offline/local modes: a Hub cache laid out here in huggingface_hub's layout (blobs/, snapshots/,
refs/main) with HF_HUB_OFFLINE, and the network refused. References: the original checkpoint's
predictions, safetensors' own NumPy reader, the manifest reader on the original world, and
hand-counted sizes."""

from __future__ import annotations

import hashlib
import json
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants
from huggingface_hub.hf_api import RepoFile
from safetensors.numpy import load_file as load_numpy
from typer.testing import CliRunner

import geovit
from geovit.card import describe_dataset
from geovit.checkpoint import load_checkpoint
from geovit.cli import app
from geovit.data.manifest import load_manifest
from geovit.errors import GeovitError
from geovit.evaluation import evaluate
from geovit.export import export_folder
from geovit.hub import (
    OSV5M_REPO,
    download_osv5m,
    download_osv_mini,
    free_bytes,
    osv5m_patterns,
    parse_shards,
    plan_download,
    resolve_model,
)
from geovit.modelfolder import CONFIG, WEIGHTS
from geovit.predictor import Predictor
from geovit.publish import hub_folder, push

REV = "0123456789abcdef0123456789abcdef01234567"


def lay_out_cache(cache: Path, kind: str, repo: str, files: dict[str, bytes]) -> Path:
    """huggingface_hub's cache layout: blobs by hash, snapshot symlinks, refs/main -> rev."""
    root = cache / f"{kind}s--{repo.replace('/', '--')}"
    snap = root / "snapshots" / REV
    for rel, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REV)
    return snap


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache in tmp_path, HF_HUB_OFFLINE on, and no network at all."""
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return cache


@pytest.fixture()
def unreachable(monkeypatch) -> None:
    """Online mode, but every connection fails at once (as on these machines)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)


@pytest.fixture(scope="module")
def folder(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_folder(tiny_checkpoint, tmp_path_factory.mktemp("st") / "model")


def _folder_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


def _photo(world: Path) -> str:
    return str(sorted((world / "images" / "test").glob("*.jpg"))[0])


def test_safetensors_folder_loads_without_torch_load(
    folder, tiny_checkpoint, tiny_world, monkeypatch
):
    original = load_checkpoint(tiny_checkpoint)
    weights = load_numpy(folder / WEIGHTS)  # safetensors' own reader, no torch
    assert weights.keys() == original.model.state_dict().keys()
    for k, v in original.model.state_dict().items():
        np.testing.assert_array_equal(weights[k], v.numpy())
    config = json.loads((folder / CONFIG).read_text())
    assert config["image_size"] == original.image_size and config["mean"] == list(original.mean)

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load used on a safetensors folder")

    monkeypatch.setattr(torch, "load", no_pickle)
    photo = _photo(tiny_world)
    got = geovit.load(folder).predict(photo, top_k=3)
    want = Predictor.from_loaded(original).predict(photo, top_k=3)
    assert got.tokens == want.tokens
    np.testing.assert_allclose(got.probs, want.probs, rtol=1e-6)


def test_export_cli_writes_the_folder(tiny_checkpoint, tmp_path):
    out = tmp_path / "exported"
    result = CliRunner().invoke(
        app, ["export", "-c", str(tiny_checkpoint), "--format", "safetensors", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["cells.parquet", "config.json", WEIGHTS]


def test_hf_hub_spec_loads_from_the_cache_offline(folder, tiny_checkpoint, tiny_world, hub_cache):
    lay_out_cache(hub_cache, "model", "someone/geo", _folder_files(folder))
    photo = _photo(tiny_world)
    got = geovit.load("hf-hub:someone/geo").predict(photo, top_k=3)
    want = geovit.load(tiny_checkpoint).predict(photo, top_k=3)
    assert got.tokens == want.tokens
    np.testing.assert_allclose(got.probs, want.probs, rtol=1e-6)
    result = CliRunner().invoke(
        app, ["predict", "--checkpoint", "hf-hub:someone/geo", photo, "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["top_k"][0]["token"] == want.tokens[0]


def test_hf_hub_spec_not_cached_offline_fails_fast(hub_cache):
    start = time.perf_counter()
    with pytest.raises(GeovitError, match="not in the Hugging Face cache"):
        load_checkpoint("hf-hub:someone/missing")
    assert time.perf_counter() - start < 5
    with pytest.raises(GeovitError, match="hf-hub:USER/NAME"):
        resolve_model("hf-hub:no-slash")


def test_unreachable_hub_uses_the_cache_or_fails_in_seconds(
    folder, tmp_path, monkeypatch, unreachable
):
    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    snap = lay_out_cache(cache, "model", "someone/geo", _folder_files(folder))
    assert resolve_model("hf-hub:someone/geo") == snap
    start = time.perf_counter()
    with pytest.raises(GeovitError, match=r"cannot reach huggingface\.co.*HF_HUB_OFFLINE"):
        resolve_model("hf-hub:someone/other")
    assert time.perf_counter() - start < 5


@pytest.fixture(scope="module")
def scores(tiny_checkpoint, tiny_world) -> dict:
    manifest, _ = load_manifest(tiny_world)
    return evaluate(Predictor.from_checkpoint(tiny_checkpoint), manifest, "test")


def test_push_folder_is_loadable_and_its_card_holds_the_metrics(
    tiny_checkpoint, tiny_world, scores, tmp_path
):
    data = describe_dataset(tiny_world, "tiny world")
    out = hub_folder(tiny_checkpoint, scores, data, "someone/geo", tmp_path / "push")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "cells.parquet", CONFIG, WEIGHTS]
    )
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "geovit"
    assert "geolocation" in meta["tags"] and "synthetic-data" in meta["tags"]
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["Cell accuracy top1 (all test images)"] == pytest.approx(
        scores["cell_accuracy"]["all_images"]["top1"], abs=1e-6
    )
    assert metrics["Median great-circle error (km)"] == pytest.approx(
        scores["distance"]["median_km"], abs=1e-6
    )
    assert 'geovit.load("hf-hub:someone/geo")' in card
    assert (
        load_checkpoint(out).cells.tokens.tolist()
        == load_checkpoint(tiny_checkpoint).cells.tokens.tolist()
    )


def test_card_names_the_osv5m_hub_dataset(tmp_path):
    (tmp_path / "train.csv").write_text("id,latitude,longitude\n")
    assert describe_dataset(tmp_path, "OSV-5M").hub_id == OSV5M_REPO


def test_push_offline_fails_fast_through_hfapi(tiny_checkpoint, tiny_world, scores, hub_cache):
    data = describe_dataset(tiny_world, "tiny world")
    start = time.perf_counter()
    with pytest.raises(GeovitError, match="HF_HUB_OFFLINE is set"):
        push(tiny_checkpoint, scores, data, "someone/geo")
    assert time.perf_counter() - start < 10


def test_push_without_token_or_network_fails_clearly(
    tiny_checkpoint, tiny_world, scores, unreachable, monkeypatch, tmp_path
):
    data = describe_dataset(tiny_world, "tiny world")
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(GeovitError, match="not logged in"):
        push(tiny_checkpoint, scores, data, "someone/geo")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    with pytest.raises(GeovitError, match=r"cannot reach huggingface\.co"):
        push(tiny_checkpoint, scores, data, "someone/geo")


# --------------------------------------------------------------------------- OSV-5M download


def _zip(images: list[Path]) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for img in images:
            zf.write(img, f"{img.parent.name}/{img.name}")
    return buffer.getvalue()


@pytest.fixture()
def osv5m_cache(tiny_world, hub_cache) -> Path:
    """The tiny world as osv5m/osv5m would serve it: CSVs and zipped image shards."""
    test = sorted((tiny_world / "images" / "test").glob("*.jpg"))
    train = sorted((tiny_world / "images" / "train").glob("*.jpg"))
    files = {
        "README.md": b"OSV-5M",
        "train.csv": (tiny_world / "train.csv").read_bytes(),
        "test.csv": (tiny_world / "test.csv").read_bytes(),
        "images/train/00.zip": _zip(train),
        "images/test/00.zip": _zip(test[: len(test) // 2]),
        "images/test/01.zip": _zip(test[len(test) // 2 :]),
    }
    return lay_out_cache(hub_cache, "dataset", OSV5M_REPO, files)


def _rows(manifest):
    return sorted(zip(manifest["id"], manifest["split"], manifest["latitude"], strict=True))


def test_download_osv5m_lays_out_what_the_reader_reads(osv5m_cache, tiny_world, tmp_path):
    out = tmp_path / "osv5m"
    result = CliRunner().invoke(app, ["download", "osv5m", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "images/test/00.zip", "images/test/01.zip", "images/train/00.zip", "test.csv", "train.csv",
    ]  # fmt: skip
    assert (out / "images/test/00.zip").stat().st_ino == (
        osv5m_cache / "images/test/00.zip"
    ).resolve().stat().st_ino  # a hard link into the cache, no second copy
    assert _rows(load_manifest(out)[0]) == _rows(load_manifest(tiny_world)[0])


def test_download_osv5m_one_split_some_shards(osv5m_cache, tmp_path):
    out = download_osv5m(tmp_path / "o", split="test", shards="01", log=lambda _: None)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "images/test/01.zip", "test.csv",
    ]  # fmt: skip
    with pytest.raises(GeovitError, match=r"lacks images/test/02\.zip"):
        download_osv5m(tmp_path / "o", split="test", shards="00-02", log=lambda _: None)


def test_download_offline_without_cache_fails_fast(hub_cache, tmp_path):
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["download", "osv5m", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "not in the Hugging Face cache" in result.output
    assert time.perf_counter() - start < 5


def test_download_unreachable_fails_fast(unreachable, tmp_path):
    start = time.perf_counter()
    with pytest.raises(GeovitError, match=r"cannot reach huggingface\.co"):
        download_osv5m(tmp_path / "o", log=lambda _: None)
    assert time.perf_counter() - start < 10


def test_shards_and_patterns():
    assert parse_shards("00-04") == ["00", "01", "02", "03", "04"]
    assert parse_shards("2-3,9") == ["02", "03", "09"]
    assert parse_shards(None) is None
    for bad in ("4-2", "a", "1-x"):
        with pytest.raises(GeovitError, match="--shards"):
            parse_shards(bad)
    assert osv5m_patterns("test", ["00"]) == ["test.csv", "images/test/00.zip"]
    with pytest.raises(GeovitError, match="--split"):
        osv5m_patterns("val", None)


def test_plan_counts_sizes_and_checks_disk_space(tmp_path):
    entries = [
        RepoFile(path="test.csv", size=1_000, oid="a"),
        RepoFile(path="images/test/00.zip", size=30_000, oid="b"),
        RepoFile(path="images/test/01.zip", size=50_000, oid="c"),
        RepoFile(path="images/train/00.zip", size=900_000, oid="d"),
    ]
    patterns = osv5m_patterns("test", None)
    plan = plan_download(entries, patterns, cached=["images/test/00.zip"], where=tmp_path)
    assert sum(plan.sizes.values()) == 81_000 and plan.needed == 51_000
    huge = [RepoFile(path="test.csv", size=free_bytes(tmp_path) + 1, oid="e")]
    with pytest.raises(GeovitError, match=r"needs .* GB but .* free"):
        plan_download(huge, ["test.csv"], cached=[], where=tmp_path)
    with pytest.raises(GeovitError, match=r"no images/test/07\.zip"):
        plan_download(entries, osv5m_patterns("test", ["07"]), cached=[], where=tmp_path)


# --------------------------------------------------------------------------- Kaggle


def test_osv_mini_needs_kaggle_credentials(tmp_path, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["download", "osv-mini", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no Kaggle credentials" in result.output and "kaggle.json" in result.output


def test_osv_mini_unreachable_fails_fast(tmp_path, monkeypatch, unreachable):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    start = time.perf_counter()
    with pytest.raises(GeovitError, match=r"cannot reach www\.kaggle\.com"):
        download_osv_mini(tmp_path / "o", log=lambda _: None)
    assert time.perf_counter() - start < 10
