"""Atomic writes: content lands whole, failures leave no trace, permissions follow the umask."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
from pathlib import Path

import pytest

from geovit.errors import GeovitError
from geovit.fileio import atomic_write, ensure_writable, write_bytes, write_text


class Boom(RuntimeError):
    pass


@pytest.fixture
def umask():
    """Run under a known umask and restore the caller's afterwards."""

    def use(mask: int) -> int:
        os.umask(mask)
        return mask

    old = os.umask(0o022)
    yield use
    os.umask(old)


def test_writes_content_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    assert write_text(path, "héllo\nwörld\n") == path
    assert path.read_bytes() == "héllo\nwörld\n".encode()
    assert write_bytes(tmp_path / "x" / "d.bin", b"\x00\xff") == tmp_path / "x" / "d.bin"
    assert (tmp_path / "x" / "d.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "c.txt", "d.bin", "x"]


def test_writer_gets_an_empty_temp_file_next_to_the_target(tmp_path):
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.is_file() and tmp.stat().st_size == 0
        assert not (tmp_path / "out.bin").exists()  # nothing visible until the rename
        with open(tmp, "wb") as f:
            f.write(b"payload")

    atomic_write(tmp_path / "out.bin", write)
    assert (tmp_path / "out.bin").read_bytes() == b"payload"
    assert seen[0].name != "out.bin" and not seen[0].exists()


def test_error_removes_temp_and_keeps_existing_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, "old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise Boom("disk on fire")

    with pytest.raises(Boom, match="disk on fire"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

    with pytest.raises(Boom):
        atomic_write(tmp_path / "new" / "never.txt", half_then_fail)
    assert not (tmp_path / "new" / "never.txt").exists()
    assert list((tmp_path / "new").iterdir()) == []


def test_existing_file_replaced_on_success(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old content that is longer than the new one")
    write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    # Reference: what a plain open() creates under the same umask.
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == 0o666 & ~mask
    for name, writer in [
        ("t.txt", lambda p: write_text(p, "x")),
        ("b.bin", lambda p: write_bytes(p, b"x")),
        ("w.bin", lambda p: atomic_write(p, lambda tmp: tmp.write_bytes(b"x"))),
    ]:
        writer(tmp_path / name)
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    # Replacing an owner-only file gives it the umask's mode too (a fresh file, not an edit).
    locked = tmp_path / "locked.txt"
    locked.write_text("old")
    locked.chmod(0o600)
    write_text(locked, "new")
    assert stat.S_IMODE(locked.stat().st_mode) == expected


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_pipeline_writers_follow_the_umask(tiny_cells, tiny_checkpoint, tmp_path, umask):
    """cells.parquet, model.pt and metrics.json once came out owner-only (tempfile.mkstemp)."""
    from geovit.cells import CellPartition
    from geovit.checkpoint import load_checkpoint, save_checkpoint, set_temperature
    from geovit.evaluation import write_metrics_json

    umask(0o022)
    written = [
        CellPartition.load(tiny_cells).save(tmp_path / "cells.parquet"),
        save_checkpoint(tmp_path / "model.pt", load_checkpoint(tiny_checkpoint)),
        write_metrics_json({"top1": 0.5}, tmp_path / "metrics.json"),
    ]
    os.chmod(tmp_path / "model.pt", 0o600)
    set_temperature(tmp_path / "model.pt", 2.0)  # a rewrite, not an in-place edit
    assert load_checkpoint(tmp_path / "model.pt").temperature == 2.0
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cells.parquet",
        "metrics.json",
        "model.pt",
    ]


def test_ensure_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "b"
    assert ensure_writable(out) == out and out.is_dir()
    assert list(out.iterdir()) == []  # the probe file is gone


def test_ensure_writable_names_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for out in (tmp_path / "file.txt" / "sub", tmp_path / "file.txt"):
        with pytest.raises(GeovitError, match="cannot write to folder") as err:
            ensure_writable(out, "--out")
        assert str(out) in str(err.value) and "\n" not in str(err.value)


def test_ensure_writable_says_disk_full(tmp_path, monkeypatch):
    real_open = os.open

    def full(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(GeovitError, match="disk full"):
        ensure_writable(tmp_path / "out")


@pytest.fixture()
def file_size_limit():
    """RLIMIT_FSIZE: a real "no room" for this process's writes (EFBIG), restored afterwards."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (n, before[1]))
    resource.setrlimit(resource.RLIMIT_FSIZE, before)
    signal.signal(signal.SIGXFSZ, old_handler)


def test_a_full_disk_is_named_and_the_old_file_kept(tmp_path, file_size_limit):
    path = write_bytes(tmp_path / "m.bin", b"old")

    def enospc(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(GeovitError, match="disk full"):
        atomic_write(path, enospc)
    file_size_limit(1000)
    with pytest.raises(GeovitError, match=r"disk full while writing .*m\.bin"):
        write_bytes(path, b"x" * 5000)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]
