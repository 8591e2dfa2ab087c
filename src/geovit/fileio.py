"""Atomic file writes: a reader (or a crash) never sees half a file, only the old or the new one.
A full disk is named as such, and output folders can be checked before the work that fills them.

Every writer goes through a temp file in the destination's own folder, so the final
``os.replace`` is a rename within one filesystem (atomic on POSIX and Windows). The temp file is
created with mode 0o666 and the process umask applied by the kernel, like ``open()`` would, so
results get the usual permissions (``tempfile.mkstemp`` would leave them owner-only, 0600).
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from geovit.errors import GeovitError

# errno values that mean "no room left": a full disk, a quota, a file size limit
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _create_empty(path: Path) -> None:
    # O_EXCL: a name clash fails instead of clobbering someone else's file.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _temp_beside(path: Path) -> Path:
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def ensure_writable(folder: str | os.PathLike[str], what: str = "--out") -> Path:
    """Create ``folder`` and prove a file can be made there, before the long work that writes
    into it: a read-only, misplaced or full output fails at once, not after the whole run."""
    folder = Path(folder)
    probe = _temp_beside(folder / "write-check")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _create_empty(probe)
        probe.unlink()
    except OSError as exc:
        full = "disk full: " if exc.errno in _NO_SPACE else ""
        raise GeovitError(
            f"{what}: cannot write to folder {folder} ({full}{exc.strerror or exc}); "
            "choose another folder or fix its permissions"
        ) from exc
    return folder


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Create ``path``'s folders, call ``write(tmp)`` to fill a temp file, then rename it onto
    ``path``. On any error the temp file is removed and an existing ``path`` is left untouched.

    ``write`` receives the temp path (already created, empty) and may reopen it, e.g.
    ``lambda tmp: torch.save(obj, tmp)``. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    _create_empty(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in _NO_SPACE:
            raise GeovitError(
                f"disk full while writing {path} ({exc.strerror}); free space on that disk "
                "or write elsewhere (the previous file, if any, is untouched)"
            ) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` to ``path`` as UTF-8."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
