"""Training under faults: full disks, existing run folders, Ctrl-C and SIGTERM, unreadable data."""

from __future__ import annotations

import os
import resource
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from geovit.cells import CellPartition
from geovit.checkpoint import load_checkpoint
from geovit.cli.train import resume_command
from geovit.data.manifest import load_manifest
from geovit.errors import GeovitError
from geovit.training import AtomicCheckpointIO, TrainConfig, build_datamodule
from test_training import toy_run


@pytest.fixture()
def file_size_limit():
    """Set RLIMIT_FSIZE (a real 'disk full' for this process's writes), restored afterwards."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill

    def limit(n_bytes: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, before[1]))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, before)
    signal.signal(signal.SIGXFSZ, old_handler)


def test_checkpoint_writer_keeps_the_previous_file_when_the_disk_fills(
    tmp_path, monkeypatch, file_size_limit
):
    run, tmp = tmp_path / "run", tmp_path / "tmpdir"
    run.mkdir()
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # where a staging writer would go
    io = AtomicCheckpointIO()
    target = run / "last.ckpt"
    io.save_checkpoint({"w": torch.arange(1000.0)}, target)
    good = target.read_bytes()
    file_size_limit(len(good) * 4)
    with pytest.raises((OSError, RuntimeError)):  # torch.save wraps EFBIG
        io.save_checkpoint({"w": torch.zeros(200_000)}, target)  # 800 KB: over the limit
    assert target.read_bytes() == good  # the last good checkpoint is intact
    assert sorted(p.name for p in run.iterdir()) == ["last.ckpt"]  # no partial temp file
    assert list(tmp.iterdir()) == []  # nothing staged in TMPDIR either
    assert torch.load(target, weights_only=True)["w"].equal(torch.arange(1000.0))


class Probe(Callback):
    """Records the checkpoint writer in use and the (epoch, batch) of every training step; with
    `signum`, sends that signal to this process after batch 0 of epoch 1."""

    def __init__(self, signum: int | None = None) -> None:
        self.signum, self.steps, self.io = signum, [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.io = trainer.strategy.checkpoint_io
        self.steps.append((trainer.current_epoch, batch_idx))
        if self.signum is not None and (trainer.current_epoch, batch_idx) == (1, 0):
            os.kill(os.getpid(), self.signum)


def test_a_second_run_into_a_used_folder_is_refused_unless_overwrite(tmp_path):
    """Rerunning used to write best-v1/last-v1 beside the old files and replace model.pt."""
    out = tmp_path / "run"
    toy_run(out, epochs=1, freeze_epochs=0, cnn_refreeze_epoch=1)
    before = load_checkpoint(out / "model.pt").model.head.weight.clone()
    with pytest.raises(GeovitError, match=r"not empty.*--resume.*--overwrite"):
        toy_run(out, epochs=1, freeze_epochs=0, cnn_refreeze_epoch=1, seed=1)
    assert torch.equal(load_checkpoint(out / "model.pt").model.head.weight, before)
    probe = Probe()
    toy_run(out, epochs=1, freeze_epochs=0, cnn_refreeze_epoch=1, seed=1, overwrite=True,
            callbacks=[probe])  # fmt: skip
    assert isinstance(probe.io, AtomicCheckpointIO)  # the writer Lightning really used
    assert sorted(p.name for p in out.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert [p.name for p in (out / "logs").iterdir()] == ["version_0"]  # old logs gone
    assert not torch.equal(load_checkpoint(out / "model.pt").model.head.weight, before)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_at_the_next_step_keeping_complete_epochs(tmp_path, signum):
    """Ctrl-C used to exit 1 with no model.pt; SIGTERM kept training."""
    out = tmp_path / "run"
    probe = Probe(signum)
    sigint_before = signal.getsignal(signal.SIGINT)
    _, result = toy_run(out, epochs=3, freeze_epochs=1, cnn_refreeze_epoch=2, callbacks=[probe])
    assert signal.getsignal(signal.SIGINT) is sigint_before  # Ctrl-C works again afterwards
    assert result.interrupted
    assert probe.steps[-1] == (1, 0)  # stopped right after the step the signal arrived in
    last = load_checkpoint(out / "last.ckpt")
    assert last.train["epoch"] == 0  # the complete epoch, nothing of the interrupted one
    model = load_checkpoint(out / "model.pt")
    best = load_checkpoint(out / "best.ckpt")
    assert all(
        torch.equal(v, best.model.state_dict()[k]) for k, v in model.model.state_dict().items()
    )
    assert not list(out.glob(".*.tmp"))  # nothing half-written


def test_resume_command_repeats_the_run_with_resume():
    argv = ["train", "--data", "my world", "--out", "r", "--resume", "old.ckpt", "--overwrite"]
    cmd = resume_command(argv, Path("r/last.ckpt"))
    assert cmd == "geovit train --data 'my world' --out r --resume r/last.ckpt"


def test_all_images_unreadable_fails_before_training(tmp_path, tiny_world, tiny_cells):
    """It used to train a whole epoch on nothing, then die with a Lightning traceback."""
    manifest, _ = load_manifest(tiny_world)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0 not really")
    broken = manifest.assign(image=str(junk))
    kw = dict(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, config=TrainConfig(workers=0))
    with pytest.raises(GeovitError, match=r"none of 16 sampled 'train' images could be read"):
        build_datamodule(broken, CellPartition.load(tiny_cells), **kw)
    one_good = broken.copy()
    for split in ("train", "val"):  # the last image of each split is readable again
        last = manifest.index[manifest["split"] == split][-1]
        one_good.loc[last, "image"] = manifest.loc[last, "image"]
    build_datamodule(one_good, CellPartition.load(tiny_cells), **kw)  # one readable: trains
