"""Streaming shards: what is written (read back with litdata itself), rank/worker splitting,
(seed, epoch) shuffling, and training from shards with exact resume. References: the original
image files' bytes, the manifest reader, CellPartition.assign, and the uninterrupted run."""

from __future__ import annotations

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
from geovit.data.shards import ShardDataset, collate_shards, read_shard_manifest, write_shards
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


def _train(shards, tiny_cells, out, epochs: int, resume=None) -> CliRunner:
    args = ["train", "--data", str(shards), "--cells", str(tiny_cells), "--out", str(out),
            "--preset", "small", "--image-size", str(SIZE), "--no-pretrained",
            "--epochs", str(epochs), "--freeze-epochs", "1", "--cnn-refreeze-epoch", "2",
            "--batch-size", "16", "--workers", "0", "--accelerator", "cpu",
            "--limit-train-batches", "3", "--limit-val-batches", "2", "--no-progress"]  # fmt: skip
    if resume is not None:
        args += ["--resume", str(resume)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_train_from_shards_resumes_exactly(shards, tiny_cells, tmp_path):
    straight = _train(shards, tiny_cells, tmp_path / "a", epochs=3)
    assert "outside the kept cells" in straight.output
    _train(shards, tiny_cells, tmp_path / "b", epochs=2)
    _train(shards, tiny_cells, tmp_path / "b", epochs=3, resume=tmp_path / "b" / "last.ckpt")
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
