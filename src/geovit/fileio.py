"""Atomic file writes: a reader (or a crash) never sees half a file, only the old or the new one.

Every writer goes through a temp file in the destination's own folder, so the final
``os.replace`` is a rename within one filesystem (atomic on POSIX and Windows). The temp file is
created with mode 0o666 and the process umask applied by the kernel, like ``open()`` would, so
results get the usual permissions (``tempfile.mkstemp`` would leave them owner-only, 0600).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Create ``path``'s folders, call ``write(tmp)`` to fill a temp file, then rename it onto
    ``path``. On any error the temp file is removed and an existing ``path`` is left untouched.

    ``write`` receives the temp path (already created, empty) and may reopen it, e.g.
    ``lambda tmp: torch.save(obj, tmp)``. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # O_EXCL: a name clash fails instead of clobbering someone else's file.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
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
