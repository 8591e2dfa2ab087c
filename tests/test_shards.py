"""Streaming shards: what is written (read back with litdata itself), rank/worker splitting,
(seed, epoch) shuffling, and training from shards with exact resume. References: the original
image files' bytes, the manifest reader, CellPartition.assign, and the uninterrupted run."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
from litdata import StreamingDataset
from litdata.utilities.env import _DistributedEnv
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from geovit.cells import CellPartition
from geovit.checkpoint import load_checkpoint
from geovit.cli import app
from geovit.data.manifest import load_manifest, read_image_bytes
from geovit.data.shards import (
    ShardDataset,
    collate_shards,
    open_shards,
    read_shard_manifest,
    write_shards,
)
from geovit.errors import GeovitError
from geovit.streaming import build_shard_datamodule
from geovit.training import TrainConfig, build_datamodule

SIZE = 64


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def manifest(tiny_world) -> pd.DataFrame:
    return load_manifest(tiny_world)[0]


@pytest.fixture(scope="module")
def shards(manifest, tmp_path_factory):
    """The tiny world's shards in ~100 kB chunks (several chunks per split, so shuffling and
    splitting act on chunks as they would at scale)."""
    return write_shards(manifest, tmp_path_factory.mktemp("s") / "shards", chunk_bytes="100KB").out


def test_shards_hold_the_encoded_images_and_their_columns(manifest, shards):
    for split in ("train", "val", "test"):
        rows = manifest[manifest["split"] == split].set_index("id")
        items = list(StreamingDataset(str(shards / split)))
        assert sorted(i["id"] for i in items) == sorted(rows.index)
        assert len(list((shards / split).glob("*.bin"))) > 1
        for item in items:
            row = rows.loc[item["id"]]
            assert item["image"] == read_image_bytes(row["image"])  # bytes as stored, no re-encode
            assert (item["latitude"], item["longitude"]) == (row["latitude"], row["longitude"])
            assert item["city"] == row["city"]
    table = read_shard_manifest(shards)
    cols = ["id", "latitude", "longitude", "split", "city", "country"]
    pd.testing.assert_frame_equal(
        table[cols].sort_values("id").reset_index(drop=True),
        manifest[cols].sort_values("id").reset_index(drop=True),
    )


def test_unreadable_images_are_counted_and_nothing_half_written(manifest, tmp_path):
    broken = manifest.copy()
    broken.loc[0, "image"] = str(tmp_path / "gone.jpg")
    report = write_shards(broken, tmp_path / "s")
    assert report.unreadable == 1 and sum(report.written.values()) == len(manifest) - 1
    assert "could not be read" in " ".join(report.lines())
    with pytest.raises(GeovitError, match="exists"):
        write_shards(broken, tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp folder left


def _rows(ds, **loader) -> list[int]:
    batches = DataLoader(ds, batch_size=4, collate_fn=collate_shards, **loader)
    return [i for b in batches for i in b["index"].tolist()]


def _dataset(shards, split="train", epoch=1, **kw) -> ShardDataset:
    n = len(read_shard_manifest(shards).query("split == @split"))
    ds = ShardDataset(
        str(shards / split), np.zeros(n, dtype=np.int64), lambda x: x[:, :8, :8].float(),
        shuffle=True, seed=0, skip_outside=False, **kw,
    )  # fmt: skip
    ds.set_epoch(epoch)
    return ds


def test_ranks_and_workers_split_and_the_epoch_alone_orders(shards):
    n = len(read_shard_manifest(shards).query("split == 'train'"))
    once = _rows(_dataset(shards))
    assert sorted(once) == list(range(n))  # one process: every image once
    assert _rows(_dataset(shards)) == once  # (seed, epoch) alone fixes the order
    assert _rows(_dataset(shards, epoch=2)) != once
    two_workers = _rows(_dataset(shards), num_workers=2)
    assert sorted(two_workers) == list(range(n))
    per_rank = []
    for rank in (0, 1):
        ds = _dataset(shards)
        ds.distributed_env = _DistributedEnv(world_size=2, global_rank=rank, num_nodes=1)
        per_rank.append(_rows(ds))
    assert not set(per_rank[0]) & set(per_rank[1])  # disjoint halves
    assert len(per_rank[0]) == len(per_rank[1]) >= n // 2 - 8  # equal, a few dropped at most


def test_shard_datamodule_matches_the_folder_one(manifest, shards, tiny_cells):
    cells = CellPartition.load(tiny_cells)
    cfg = TrainConfig(batch_size=8, workers=0)
    kw = dict(image_size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3, config=cfg)
    _, folder_report = build_datamodule(manifest, cells, **kw)
    dm, report = build_shard_datamodule(read_shard_manifest(shards), cells, root=shards, **kw)
    assert report == folder_report
    for item in StreamingDataset(str(shards / "val")):
        assert tuple(dm.val_coords[item["row"]]) == (item["latitude"], item["longitude"])
        want = cells.assign(np.array([item["latitude"]]), np.array([item["longitude"]]))[0]
        assert dm.labels["val"][item["row"]] == want
    for item in StreamingDataset(str(shards / "train")):
        want = cells.assign(np.array([item["latitude"]]), np.array([item["longitude"]]))[0]
        assert dm.labels["train"][item["row"]] == want


def _train(data, tiny_cells, out, epochs: int, resume=None) -> CliRunner:
    args = ["train", "--data", str(data), "--cells", str(tiny_cells), "--out", str(out),
            "--preset", "small", "--image-size", str(SIZE), "--no-pretrained",
            "--epochs", str(epochs), "--freeze-epochs", "1", "--cnn-refreeze-epoch", "2",
            "--batch-size", "16", "--workers", "1", "--accelerator", "cpu",
            "--limit-train-batches", "3", "--limit-val-batches", "2", "--no-progress"]  # fmt: skip
    if resume is not None:
        args += ["--resume", str(resume)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("source", ["shards", "folder"])
def test_resume_reproduces_the_uninterrupted_run_with_workers(
    source, shards, tiny_world, tiny_cells, tmp_path
):
    """With a worker process, the resumed run's first epoch must get that epoch's order and
    worker seeds (Lightning's current_epoch still names the checkpoint's epoch then)."""
    data = shards if source == "shards" else tiny_world
    straight = _train(data, tiny_cells, tmp_path / "a", epochs=3)
    assert "outside the kept cells" in straight.output
    _train(data, tiny_cells, tmp_path / "b", epochs=2)
    _train(data, tiny_cells, tmp_path / "b", epochs=3, resume=tmp_path / "b" / "last.ckpt")
    a = load_checkpoint(tmp_path / "a" / "last.ckpt")
    b = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert a.train["epoch"] == b.train["epoch"] == 2
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.train["val"] == b.train["val"]


def test_shards_cli(tiny_world, tmp_path):
    out = tmp_path / "shards"
    result = CliRunner().invoke(app, ["shards", "--data", str(tiny_world), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "shards in" in result.output
    again = CliRunner().invoke(app, ["shards", "--data", str(tiny_world), "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output


def test_evaluate_and_calibrate_from_shards_equal_the_folder(
    manifest, shards, tiny_world, tiny_checkpoint
):
    from geovit.evaluation import calibrate, evaluate
    from geovit.predictor import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    table = read_shard_manifest(shards)
    from_shards = evaluate(predictor, table, "test", batch_size=16)
    from_folder = evaluate(predictor, manifest, "test", batch_size=16)
    assert from_shards == from_folder  # same images, same batches: the same numbers
    sampled = calibrate(predictor, table, "val", max_images=20, batch_size=8)
    reference = calibrate(predictor, manifest, "val", max_images=20, batch_size=8)
    assert sampled.temperature == pytest.approx(reference.temperature, rel=1e-5)


def test_evaluate_cli_reads_shards(shards, tiny_checkpoint, tmp_path):
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(shards),
            "--out", str(tmp_path / "eval")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval" / "metrics.json").is_file()


DDP_SCRIPT = """
import functools, pathlib, sys, torch
import lightning as L
from lightning.pytorch.callbacks import Callback
from geovit.cells import CellPartition
from geovit.data.shards import read_shard_manifest
from geovit.model import model_config
from geovit.streaming import build_shard_datamodule
from geovit.training import TrainConfig, train

class Seen(Callback):
    def __init__(self):
        self.rows = {{}}
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

seen = Seen()
shards, out = pathlib.Path({shards!r}), pathlib.Path({out!r})
cells = CellPartition.load({cells!r})
cfg = TrainConfig(epochs=2, freeze_epochs=1, cnn_refreeze_epoch=2, batch_size=8, workers=0,
                  accelerator="cpu", devices=2)
build = functools.partial(build_shard_datamodule, root=shards)
result, _ = train(read_shard_manifest(shards), cells, out, model_config("small", len(cells),
                  image_size=32), cfg, progress=False, build=build, callbacks=[seen])
rank = torch.distributed.get_rank()
torch.save(seen.rows, out / f"rank{{rank}}.pt")
"""


def test_ddp_ranks_stream_disjoint_shares(shards, tiny_cells, tmp_path):
    import subprocess
    import sys

    script, out = tmp_path / "ddp.py", tmp_path / "run"
    script.write_text(DDP_SCRIPT.format(shards=str(shards), out=str(out), cells=str(tiny_cells)))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    table = read_shard_manifest(shards)
    inside = set(np.flatnonzero(read_cells_labels(table, tiny_cells) >= 0))
    for epoch in (0, 1):
        a, b = set(r0[epoch]), set(r1[epoch])
        assert not a & b  # every rank streams its own chunks
        assert a | b <= inside and len(a | b) >= len(inside) - 2 * 8 * 2  # less drop_last
    assert r0[0] != r0[1]  # reshuffled per epoch


def read_cells_labels(table: pd.DataFrame, cells_path) -> np.ndarray:
    """Cell labels of the train split, by shard row (CellPartition.assign, the reference)."""
    train = table[table["split"] == "train"].sort_values("row")
    return CellPartition.load(cells_path).assign(
        train["latitude"].to_numpy(), train["longitude"].to_numpy()
    )


# --- shards in an object store: moto's S3 server, read by litdata's own S3 client -------------


@pytest.fixture
def s3(monkeypatch, shards):
    """An S3 API server (moto) on localhost holding the shards at s3://geo/data/shards, with
    the AWS settings a user of an S3-compatible store sets (AWS_ENDPOINT_URL)."""
    import socket

    import boto3
    import litdata.streaming.downloader as downloader
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    # litdata fetches chunks with obstore, which refuses plain-http endpoints; marking obstore
    # as started by another process (litdata's own fork guard) sends it through its boto3 path.
    monkeypatch.setattr(downloader, "_OBSTORE_INIT_PID", -1)
    client = boto3.client("s3")
    client.create_bucket(Bucket="geo")
    for f in shards.rglob("*"):
        if f.is_file():
            client.upload_file(str(f), "geo", f"data/shards/{f.relative_to(shards).as_posix()}")
    yield "s3://geo/data/shards"
    server.stop()


def test_train_and_evaluate_stream_shards_from_s3(
    s3, shards, tiny_cells, tiny_checkpoint, tmp_path
):
    cache = tmp_path / "cache"

    def evaluate(name: str, data: str):
        args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", data, "--out",
                str(tmp_path / name), "--batch-size", "16", "--cache-dir", str(cache)]  # fmt: skip
        return CliRunner().invoke(app, args)

    local, remote = evaluate("local", str(shards)), evaluate("remote", s3)
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    read = lambda name: json.loads((tmp_path / name / "metrics.json").read_text())  # noqa: E731
    assert read("remote") == read("local")  # the same images from the store: the same numbers
    (mirror,) = cache.iterdir()  # litdata's chunk cache: the test chunks came from the store
    fetched = sorted(p.name for p in (mirror / "test").glob("chunk-*.bin"))
    assert fetched == sorted(p.name for p in (shards / "test").glob("chunk-*.bin"))
    for name in fetched:
        assert (mirror / "test" / name).read_bytes() == (shards / "test" / name).read_bytes()

    out = tmp_path / "run"
    args = ["train", "--data", s3, "--cache-dir", str(cache), "--cells", str(tiny_cells),
            "--out", str(out), "--preset", "small", "--image-size", "32", "--no-pretrained",
            "--epochs", "1", "--freeze-epochs", "0", "--batch-size", "8", "--workers", "0",
            "--accelerator", "cpu", "--limit-train-batches", "2", "--limit-val-batches", "1",
            "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "model.pt").is_file()
    assert list(cache.iterdir()) == [mirror]  # the same shards: the same mirror
    assert list((mirror / "train").glob("chunk-*.bin"))


def test_unusable_object_store_urls_fail_in_one_line(s3, tiny_checkpoint, monkeypatch, tmp_path):
    import socket

    with pytest.raises(GeovitError, match=r"cannot read shards\.json"):
        open_shards("s3://geo/not/shards", tmp_path)  # reachable, but nothing there
    with socket.socket() as probe:  # a port nothing listens on: the store is unreachable
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    start = time.perf_counter()
    with pytest.raises(GeovitError, match=f"cannot reach 127.0.0.1 to read {s3}"):
        open_shards(s3, tmp_path)
    assert time.perf_counter() - start < 10  # not boto3's 1,000 adaptive retries
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(GeovitError, match="no AWS credentials"):
        open_shards(s3, tmp_path)
    args = ["evaluate", "-c", str(tiny_checkpoint), "--data", s3, "--out", str(tmp_path / "e")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "no AWS credentials" in res.output
    with pytest.raises(GeovitError, match="google-cloud-storage"):
        open_shards("gs://bucket/shards", tmp_path)
    with pytest.raises(GeovitError, match="azure:// is not supported"):
        open_shards("azure://container/shards", tmp_path)
    assert open_shards(tmp_path, tmp_path) is None  # a local folder that is not shards
