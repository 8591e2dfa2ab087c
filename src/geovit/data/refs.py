"""Image references: a file path or "ARCHIVE.zip::member", and reading their bytes.

Manifests, image loading, prediction inputs and shards all name images this way; keeping the
reference format and its reader here (torch-free, pandas-free) gives it one owner.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

from geovit.errors import GeovitError

ZIP_SEP = "::"
JPEG_SUFFIXES = (".jpg", ".jpeg")
# File names taken for images when a folder or an archive is expanded into its photos.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# The image formats geovit decodes, checked from the header before any decoder runs: nothing
# else reaches Pillow's other plugins (EPS would run Ghostscript). Pillow's JPEG plugin also
# opens the multi-picture JPEGs many phones write (their format reads "MPO").
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")


def split_ref(ref: str) -> tuple[str, str | None]:
    """("ARCHIVE.zip", "member") for a zip reference, (path, None) for a plain file; a path
    that exists as a file is that file, even with "::" in its name."""
    archive, sep, member = ref.partition(ZIP_SEP)
    return (archive, member) if sep and not os.path.isfile(ref) else (ref, None)


_ZIPS: dict[str, zipfile.ZipFile] = {}
_ZIPS_PID = os.getpid()


def open_zip(path: str) -> zipfile.ZipFile:
    """One cached handle per archive and process.

    A handle inherited through fork shares its file offset with the parent, so concurrent
    DataLoader workers would read each other's bytes: the cache is dropped in a new process.
    """
    global _ZIPS_PID
    if os.getpid() != _ZIPS_PID:
        for inherited in _ZIPS.values():
            inherited.close()  # closes only this process's copy of the descriptor
        _ZIPS.clear()
        _ZIPS_PID = os.getpid()
    handle = _ZIPS.get(path)
    if handle is None:
        try:
            handle = _ZIPS[path] = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise GeovitError(f"cannot open archive {path}: {exc}; re-download it") from exc
    return handle


def read_image_bytes(ref: str) -> bytes:
    """The encoded bytes of an image given as a path or "ARCHIVE.zip::member"."""
    path, member = split_ref(ref)
    try:
        return open_zip(path).read(member) if member is not None else Path(path).read_bytes()
    except (OSError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError,
            NotImplementedError) as exc:  # fmt: skip
        # zlib.error/EOFError: damaged member; RuntimeError: encrypted; NotImplementedError:
        # a compression method zipfile lacks
        raise GeovitError(f"cannot read image {ref}: {exc}") from exc


def image_exists(ref: str, members: dict[str, set[str]]) -> bool:
    """Whether a reference names an existing file or archive member; `members` caches each
    archive's member names across calls."""
    path, member = split_ref(ref)
    if member is None:
        return os.path.isfile(path)
    if path not in members:
        try:
            members[path] = set(open_zip(path).namelist())
        except GeovitError:
            members[path] = set()
    return member in members[path]
