"""Read a geotagged image collection into one validated table: the manifest.

Every later stage (cells, training, evaluation) consumes the same columns whatever the source
layout was, so layout quirks stay here. Bad records are dropped but always counted by reason in
a `ManifestReport`, and the validation split is carved so near-duplicate frames (one drive, one
street block) never sit on both sides of it.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import string
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from geovit.dataset_options import FORMATS, SPLITS, VAL_SPLITS, DatasetOptions
from geovit.errors import GeovitError

COLUMNS = ("id", "image", "latitude", "longitude", "split")
METADATA_COLUMNS = (
    "country",
    "region",
    "sub-region",
    "city",
    "sequence",
    "unique_country",
    "unique_region",
    "unique_sub-region",
    "unique_city",
)
ZIP_SEP = "::"
JPEG_SUFFIXES = (".jpg", ".jpeg")
# The image formats geovit decodes, checked from the header before any decoder runs: nothing
# else reaches Pillow's other plugins (EPS would run Ghostscript). Pillow's JPEG plugin also
# opens the multi-picture JPEGs many phones write (their format reads "MPO").
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
KM_PER_DEGREE = 6371.0 * np.pi / 180.0

IMAGE_ALIASES = ("image", "image_path", "path", "filepath", "file", "filename", "img")
LAT_ALIASES = ("latitude", "lat")
LON_ALIASES = ("longitude", "lon", "lng", "long")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

REASONS = {
    "missing_id": "no id",
    "nan_coordinates": "missing or non-numeric latitude/longitude",
    "out_of_range": "latitude outside [-90, 90] or longitude outside [-180, 180]",
    "duplicate_id": "id seen before (first kept)",
    "unknown_split": "split value not train/val/test",
    "no_gps": "JPEG without EXIF GPS position",
    "bad_gps_ref": "EXIF GPS hemisphere (N/S or E/W) missing or invalid",
    "missing_image": "image file or archive member not found",
    "unreadable_image": "image cannot be decoded",
}
IMAGE_REASONS = ("missing_image", "unreadable_image")  # examples show the image, not the id
N_EXAMPLES = 5


@dataclass
class ManifestReport:
    """What happened while reading a collection: counts of dropped records by reason."""

    source: str
    fmt: str
    n_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_kept(self) -> int:
        return sum(self.splits.values())

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def add(self, reason: str, count: int, examples: Iterable[str]) -> None:
        """Count `count` dropped records under `reason` (one of REASONS)."""
        if count <= 0:
            return
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        kept = self.examples.setdefault(reason, [])
        kept.extend(list(examples)[: N_EXAMPLES - len(kept)])

    def drop(self, df: pd.DataFrame, bad: np.ndarray | pd.Series, reason: str) -> pd.DataFrame:
        """Remove the rows flagged `bad` from `df`, counting them under `reason`."""
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            rows = df.loc[bad].head(N_EXAMPLES)
            first, other = ("image", "id") if reason in IMAGE_REASONS else ("id", "image")
            shown = rows[first].fillna(rows[other]).fillna("?")
            self.add(reason, int(bad.sum()), [str(x) for x in shown])
        return df.loc[~bad]

    def lines(self) -> list[str]:
        """Human-readable summary, one statement per line (for the CLI and logs)."""
        split_text = ", ".join(f"{s} {self.splits.get(s, 0)}" for s in SPLITS)
        out = [
            f"manifest {self.source} (format {self.fmt})",
            f"read {self.n_read} records, kept {self.n_kept} ({split_text}), "
            f"dropped {self.n_dropped}",
        ]
        for reason, count in self.dropped.items():
            shown = ", ".join(self.examples.get(reason, []))
            out.append(f"dropped {count} {reason} ({REASONS[reason]}), e.g. {shown}")
        out += [f"note: {note}" for note in self.notes]
        return out


# --------------------------------------------------------------------------- image references


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


def _image_exists(ref: str, members: dict[str, set[str]]) -> bool:
    path, member = split_ref(ref)
    if member is None:
        return os.path.isfile(path)
    if path not in members:
        try:
            members[path] = set(open_zip(path).namelist())
        except GeovitError:
            members[path] = set()
    return member in members[path]


def _image_readable(ref: str) -> bool:
    """Decode at reduced JPEG scale (draft mode): catches truncated files at ~1/10 the cost."""
    try:
        with Image.open(io.BytesIO(read_image_bytes(ref)), formats=IMAGE_FORMATS) as im:
            im.draft("RGB", (64, 64))
            im.load()
    except Exception:  # any decoder failure makes the record unreadable, never a crash
        return False
    return True


# --------------------------------------------------------------------------------- readers


def _walk_sorted(
    folder: Path, report: ManifestReport | None = None
) -> Iterable[tuple[str, list[str]]]:
    """(dirpath, sorted file names) depth-first in sorted order, so indexes are reproducible.

    Linked folders are followed, but each real directory is visited once: a link back to a
    parent (a loop) or a second link to one folder is skipped and noted in `report`.
    """
    seen: set[tuple[int, int]] = set()
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            skipped.append(dirpath)
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        yield dirpath, sorted(filenames)
    if skipped and report is not None:
        report.notes.append(
            f"skipped {len(skipped)} linked folder(s) already visited (symlink loop or duplicate "
            f"link), e.g. {', '.join(skipped[:N_EXAMPLES])}"
        )


def index_images(folder: Path, report: ManifestReport) -> dict[str, str]:
    """Map image stem (the dataset id) -> reference, for extracted JPEGs and JPEGs inside zips.

    Zips are indexed from their central directory only (no extraction). Extracted files win
    over archive members of the same id because they are cheaper to read.
    """
    index: dict[str, str] = {}
    archives: list[str] = []
    for dirpath, names in _walk_sorted(folder, report):
        for name in names:
            lower = name.lower()
            if lower.endswith(JPEG_SUFFIXES):
                index.setdefault(name.rsplit(".", 1)[0], os.path.join(dirpath, name))
            elif lower.endswith(".zip"):
                archives.append(os.path.join(dirpath, name))
    for archive in archives:
        try:
            members = open_zip(archive).namelist()
        except GeovitError:
            report.notes.append(
                f"unreadable archive {archive} skipped: its images count as missing"
            )
            continue
        for member in members:
            if member.lower().endswith(JPEG_SUFFIXES):
                stem = member.rpartition("/")[2].rpartition(".")[0]
                index.setdefault(stem, f"{archive}{ZIP_SEP}{member}")
    return index


def _require_extra(path: Path, header: pd.Index, extra: tuple[str, ...]) -> None:
    missing = [c for c in extra if c not in header]
    if missing:
        raise GeovitError(
            f"{path}: no column(s) {', '.join(missing)} to keep; columns: {list(header)}"
        )


def _read_csv_columns(
    path: Path, required: tuple[str, ...], extra: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Required + known metadata + `extra` columns, all as strings (OSV ids overflow float64)."""
    header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in required if c not in header]
    if missing:
        raise GeovitError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(required)}"
        )
    _require_extra(path, header, extra)
    meta = [c for c in METADATA_COLUMNS if c in header]
    usecols = list(dict.fromkeys([*required, *meta, *extra]))
    return pd.read_csv(path, usecols=usecols, dtype=str, engine="pyarrow")


def _read_split_tables(
    root: Path,
    parts: tuple[tuple[str, str, str], ...],
    report: ManifestReport,
    extra: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Shared reader for OSV-5M and OSV-Mini: one CSV and one image folder per split."""
    frames = []
    for split, csv_name, image_dir in parts:
        csv = root / csv_name
        if not csv.is_file():
            continue
        df = _read_csv_columns(csv, ("id", "latitude", "longitude"), extra)
        index = index_images(root / image_dir, report)
        if not index:
            report.notes.append(f"no images found under {root / image_dir}")
        df["image"] = df["id"].map(index)
        df["split"] = split
        frames.append(df)
    if not frames:
        names = " or ".join(csv for _, csv, _ in parts)
        raise GeovitError(f"{root}: neither {names} found")
    return pd.concat(frames, ignore_index=True)


def read_osv5m(root: Path, report: ManifestReport, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """OpenStreetView-5M: train.csv/test.csv + images/{train,test}/ (files or zip archives)."""
    parts = (("train", "train.csv", "images/train"), ("test", "test.csv", "images/test"))
    return _read_split_tables(root, parts, report, extra)


def _mini_root(folder: Path) -> Path | None:
    for root in (folder / "osv5m", folder):
        if (root / "train_mini.csv").is_file() or (root / "test_mini.csv").is_file():
            return root
    return None


def read_osv_mini(
    folder: Path, report: ManifestReport, extra: tuple[str, ...] = ()
) -> pd.DataFrame:
    """OSV-Mini-129k: osv5m/{train,test}_mini.csv + {train,test}_images/<state>/<id>.jpg."""
    root = _mini_root(folder)
    if root is None:
        raise GeovitError(f"{folder}: no osv5m/train_mini.csv or test_mini.csv found")
    parts = (("train", "train_mini.csv", "train_images"), ("test", "test_mini.csv", "test_images"))
    return _read_split_tables(root, parts, report, extra)


def _pick_column(
    columns: pd.Index, given: str | None, aliases: tuple[str, ...], option: str
) -> str | None:
    """The column named by `option` (`given`), else the first alias present, else None."""
    if given is not None:
        if given not in columns:
            raise GeovitError(f"column {given!r} ({option}) not in table; columns: {list(columns)}")
        return given
    lower = {str(c).lower(): c for c in columns}
    return next((lower[a] for a in aliases if a in lower), None)


def _no_column(columns: pd.Index, aliases: tuple[str, ...], what: str, option: str) -> GeovitError:
    return GeovitError(
        f"no {what} column in table (looked for {', '.join(aliases)}); name it with {option}. "
        f"Columns: {list(columns)}"
    )


def _template_paths(raw: pd.DataFrame, template: str) -> list[str]:
    """`--image-template` filled in per row from the table's columns, e.g. "images/{id}.jpg"."""
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    missing = [f for f in fields if f not in raw.columns]
    if not fields or missing:
        raise GeovitError(
            f"--image-template {template!r} must name table columns in braces"
            + (f"; not in table: {', '.join(missing)}" if missing else "")
            + f". Columns: {list(raw.columns)}"
        )
    text = pd.DataFrame({f: _as_str(raw[f]) for f in dict.fromkeys(fields)})
    return [template.format_map(row) for row in text.to_dict("records")]


def _resolve_ref(ref: str, base: Path) -> str:
    whole = ref if os.path.isabs(ref) else str(base / ref)
    if os.path.isfile(whole):  # an existing file is a file, even with "::" in its name
        return whole
    path, member = split_ref(ref)
    full = path if os.path.isabs(path) else str(base / path)
    return full if member is None else f"{full}{ZIP_SEP}{member}"


CSV_SEPARATORS = ",;\t|"  # the ones a CSV's header is sniffed for
SNIFF_LINES = 20


def _sniff_sep(path: Path, encoding: str) -> str:
    """The separator of a CSV's first lines (``;`` in many European exports), else ``,``."""
    with path.open(encoding=encoding, errors="replace", newline="") as f:
        lines = [line for _, line in zip(range(SNIFF_LINES), f, strict=False)]
    try:
        return csv.Sniffer().sniff("".join(lines), delimiters=CSV_SEPARATORS).delimiter
    except csv.Error:
        return ","


def read_csv(path: Path, sep: str | None = None, encoding: str | None = None) -> pd.DataFrame:
    """A CSV as text columns, or one GeovitError for an empty file, text that is not in
    ``encoding`` (UTF-8 by default), or rows that do not split on ``sep`` (sniffed if None)."""
    encoding = encoding or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise GeovitError(
            f"--encoding {encoding!r} is not a known text encoding (e.g. utf-8, latin-1, cp1252)"
        ) from None
    empty = GeovitError(f"{path} is empty: a table needs a header row and records")
    if path.stat().st_size == 0:
        raise empty
    sep = sep or _sniff_sep(path, encoding)
    try:
        table = pd.read_csv(path, dtype=str, engine="pyarrow", sep=sep, encoding=encoding)
    except pd.errors.EmptyDataError:
        raise empty from None
    except (ValueError, UnicodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, UnicodeError) or "invalid UTF8" in reason:
            raise GeovitError(
                f"{path} is not {encoding} text ({reason}); pass its encoding, "
                "e.g. --encoding latin-1"
            ) from None
        raise GeovitError(
            f"cannot read {path} as a CSV separated by {sep!r} ({reason}); pass its "
            "separator, e.g. --sep ';'"
        ) from None
    (header,) = table.columns if len(table.columns) == 1 else ("",)
    if any(c in header for c in CSV_SEPARATORS):
        raise GeovitError(
            f"{path} splits into one column {header!r} on {sep!r}; pass its separator, "
            "e.g. --sep ';'"
        )
    return table


def read_table(
    path: Path,
    report: ManifestReport,
    image_col: str | None = None,
    lat_col: str | None = None,
    lon_col: str | None = None,
    extra: tuple[str, ...] = (),
    image_template: str | None = None,
    need_images: bool = True,
    sep: str | None = None,
    encoding: str | None = None,
) -> pd.DataFrame:
    """A CSV/Parquet with image path and lat/lon columns; relative paths are table-relative.

    The image path comes from `image_col`, or is built from other columns by `image_template`;
    without `need_images` a coordinates-only table is fine (its rows have no image).
    """
    if path.suffix.lower() == ".csv":
        raw = read_csv(path, sep, encoding)
    else:
        try:
            raw = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise GeovitError(f"cannot read {path} as Parquet: {exc}") from exc
    cols = raw.columns
    lat = _pick_column(cols, lat_col, LAT_ALIASES, "--lat-col")
    lon = _pick_column(cols, lon_col, LON_ALIASES, "--lon-col")
    if lat is None:
        raise _no_column(cols, LAT_ALIASES, "latitude", "--lat-col")
    if lon is None:
        raise _no_column(cols, LON_ALIASES, "longitude", "--lon-col")
    image = _pick_column(cols, image_col, IMAGE_ALIASES, "--image-col")
    if image_template is not None:
        paths: list | pd.Series = _template_paths(raw, image_template)
    elif image is not None:
        paths = raw[image]
    elif need_images:
        raise GeovitError(
            f"no image path column in table (looked for {', '.join(IMAGE_ALIASES)}); name it "
            '--image-col, or build paths from ids with --image-template "images/{id}.jpg". '
            f"Columns: {list(cols)}"
        )
    else:
        paths = [None] * len(raw)
    refs = [None if pd.isna(r) else _resolve_ref(str(r), path.parent) for r in paths]
    if "id" in cols:
        ids = _as_str(raw["id"])
    elif image is not None:
        ids = raw[image].astype("str")
    else:
        ids = pd.Series(np.arange(len(raw)), index=raw.index).astype("str")  # the row number
    df = pd.DataFrame(
        {
            "id": ids,
            "image": pd.Series(refs, index=raw.index, dtype="str"),
            "latitude": raw[lat],
            "longitude": raw[lon],
        }
    )
    _require_extra(path, raw.columns, extra)
    for col in dict.fromkeys([*METADATA_COLUMNS, *extra]):
        if col in cols:
            df[col] = _as_str(raw[col])
    split_col = next((c for c in cols if str(c).lower() == "split"), None)
    if split_col is not None:
        df["split"] = raw[split_col].astype("str").str.strip().str.lower().map(SPLIT_ALIASES)
        unknown = df["split"].isna().to_numpy()
        report.n_read += int(unknown.sum())
        df = report.drop(df, unknown, "unknown_split")
    return df


def _as_str(col: pd.Series) -> pd.Series:
    """Strings, with integral floats printed as ints (a Parquet int column with NaN turns float)."""
    if pd.api.types.is_float_dtype(col):
        integral = col.notna() & (col == np.round(col))
        text = col.astype("str")
        text[integral] = col[integral].astype("int64").astype("str")
        return text
    return col.astype("str")


def _dms_to_degrees(value: object, ref: object, hemispheres: str) -> float | None:
    """EXIF GPS (degrees, minutes, seconds) rationals + hemisphere ref -> signed degrees.

    `hemispheres` is "NS" or "EW" (positive first); None when the ref is missing or neither:
    guessing north/east would put a Colorado photo in China.
    """
    parts = value if isinstance(value, tuple | list) else (value,)
    degrees = sum(float(p) / 60.0**i for i, p in enumerate(parts))
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    ref = str(ref or "").strip("\x00 ").upper()
    if len(ref) != 1 or ref not in hemispheres:
        return None
    return -degrees if ref == hemispheres[1] else degrees


def exif_latlon(path: str) -> tuple[float, float] | str:
    """(lat, lon) from a JPEG's EXIF GPS tags, else the REASONS key why not ("no_gps",
    "bad_gps_ref"); OSError when unreadable."""
    with Image.open(path, formats=IMAGE_FORMATS) as im:
        gps = im.getexif().get_ifd(0x8825)
    if 2 not in gps or 4 not in gps:
        return "no_gps"
    lat = _dms_to_degrees(gps[2], gps.get(1), "NS")
    lon = _dms_to_degrees(gps[4], gps.get(3), "EW")
    return "bad_gps_ref" if lat is None or lon is None else (lat, lon)


def read_exif_folder(folder: Path, report: ManifestReport) -> pd.DataFrame:
    """A folder (recursively) of JPEGs carrying GPS EXIF tags; id = path relative to the folder."""
    rows: list[tuple] = []
    bad: dict[str, list[str]] = {"no_gps": [], "bad_gps_ref": [], "unreadable_image": []}
    for dirpath, names in _walk_sorted(folder, report):
        for name in names:
            if not name.lower().endswith(JPEG_SUFFIXES):
                continue
            path = os.path.join(dirpath, name)
            rel = Path(path).relative_to(folder).as_posix()
            try:
                latlon = exif_latlon(path)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
                bad["unreadable_image"].append(rel)
                continue
            if isinstance(latlon, str):
                bad[latlon].append(rel)
            else:
                rows.append((rel, path, *latlon))
    for reason, rels in bad.items():
        report.n_read += len(rels)
        report.add(reason, len(rels), rels)
    return pd.DataFrame(rows, columns=["id", "image", "latitude", "longitude"]).astype(
        {"id": "str", "image": "str"}
    )


def _has_jpeg(folder: Path) -> bool:
    return any(
        n.lower().endswith(JPEG_SUFFIXES) for _, names in _walk_sorted(folder) for n in names
    )


def detect_format(source: Path) -> str:
    """Which reader fits `source` (see FORMATS)."""
    if source.is_file():
        if source.suffix.lower() in TABLE_SUFFIXES:
            return "table"
        raise GeovitError(f"{source}: not a .csv/.parquet table; pass a table or a dataset folder")
    if not source.is_dir():
        raise GeovitError(f"{source}: no such file or folder")
    if (source / "train.csv").is_file() or (source / "test.csv").is_file():
        return "osv5m"
    if _mini_root(source) is not None:
        return "osv-mini"
    if _has_jpeg(source):
        return "exif"
    raise GeovitError(
        f"{source}: not a recognised dataset (expected train.csv/test.csv, "
        "osv5m/train_mini.csv, a .csv/.parquet table or a folder of geotagged JPEGs)"
    )


def _no_gps_hint(folder: Path) -> str:
    """What to do when a folder's JPEGs carry no GPS: give the coordinates in a table."""
    tables = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
    found = f" ({', '.join(tables)} found there)" if tables else ""
    return (
        "; without EXIF GPS the coordinates must come from a .csv/.parquet table with image, "
        f"latitude and longitude columns: pass the table as the dataset{found}"
    )


# ------------------------------------------------------------------------------ validation


def validate(
    df: pd.DataFrame,
    report: ManifestReport,
    *,
    check_paths: bool,
    check_images: bool,
    images: bool = True,
) -> pd.DataFrame:
    """Drop bad rows, counting each under the first reason it fails (order of REASONS).

    With ``images=False`` (coordinates only) no row needs an image.
    """
    df = report.drop(df, df["id"].isna() | (df["id"].str.len() == 0), "missing_id")
    lat = pd.to_numeric(df["latitude"], errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(df["longitude"], errors="coerce").to_numpy(np.float64)
    df = df.assign(latitude=lat, longitude=lon)
    df = report.drop(df, np.isnan(lat) | np.isnan(lon), "nan_coordinates")
    lat, lon = df["latitude"].to_numpy(), df["longitude"].to_numpy()
    df = report.drop(df, (np.abs(lat) > 90) | (np.abs(lon) > 180), "out_of_range")
    df = report.drop(df, df["id"].duplicated(keep="first"), "duplicate_id")
    if not images:
        return df
    missing = df["image"].isna().to_numpy().copy()
    if check_paths:
        members: dict[str, set[str]] = {}
        missing |= np.array(
            [not _image_exists(r, members) if isinstance(r, str) else True for r in df["image"]],
            dtype=bool,
        )
    df = report.drop(df, missing, "missing_image")
    if check_images and len(df):
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            readable = np.fromiter(pool.map(_image_readable, df["image"]), bool, len(df))
        df = report.drop(df, ~readable, "unreadable_image")
    return df


# ---------------------------------------------------------------------------------- splits


def spatial_blocks(lat: np.ndarray, lon: np.ndarray, block_km: float) -> np.ndarray:
    """Integer id of a ~block_km x block_km cell of a latitude-band grid.

    Longitude cells widen toward the poles only as much as needed to stay ~block_km wide, so
    blocks are close to equal-area; they serve to keep neighbouring photos together.
    """
    dlat = block_km / KM_PER_DEGREE
    band = np.floor((np.asarray(lat) + 90.0) / dlat).astype(np.int64)
    band_lat = np.clip(-90.0 + (band + 0.5) * dlat, -90.0, 90.0)
    n_lon = np.maximum(1, np.floor(360.0 * np.cos(np.radians(band_lat)) / dlat)).astype(np.int64)
    col = np.floor((np.asarray(lon) + 180.0) / 360.0 * n_lon).astype(np.int64) % n_lon
    return band * (1 << 32) + col


def _groups(
    df: pd.DataFrame, val_split: str, block_km: float, report: ManifestReport
) -> np.ndarray:
    """Rows sharing a code must land on the same side of a split."""
    if val_split == "sequence":
        if "sequence" in df.columns and df["sequence"].notna().any():
            codes, _ = pd.factorize(df["sequence"])
            alone = codes < 0  # no sequence: a group of its own
            codes[alone] = codes.max() + 1 + np.arange(alone.sum())
            return codes
        report.notes.append("no sequence column: split by spatial block instead")
        val_split = "spatial"
    if val_split == "spatial":
        return spatial_blocks(df["latitude"].to_numpy(), df["longitude"].to_numpy(), block_km)
    return np.arange(len(df))


def pick_groups(codes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask selecting whole groups, in random order, until ~fraction of rows is taken."""
    uniq, inverse, sizes = np.unique(codes, return_inverse=True, return_counts=True)
    order = rng.permutation(len(uniq))
    cum = np.cumsum(sizes[order])
    taken = np.zeros(len(uniq), dtype=bool)
    taken[order[cum - sizes[order] / 2.0 < fraction * len(codes)]] = True
    return taken[inverse]


def assign_splits(
    df: pd.DataFrame,
    report: ManifestReport,
    *,
    val_fraction: float,
    test_fraction: float,
    val_split: str,
    seed: int,
    block_km: float,
) -> pd.DataFrame:
    """Keep the dataset's own split; carve val (and test when there is no split) by groups."""
    rng = np.random.default_rng(seed)
    if "split" in df.columns:
        split = df["split"].to_numpy(dtype=object).copy()
        codes = None
    else:
        codes = _groups(df, val_split, block_km, report)
        split = np.full(len(df), "train", dtype=object)
        test = pick_groups(codes, test_fraction, rng)
        split[test] = "test"
        n_test = int(test.sum())
        report.notes.append(
            f"no split in the data: {n_test} records ({n_test / len(df):.0%}) held out as test"
            if n_test
            else f"no split in the data and too few groups for a {test_fraction:.0%} test "
            "split: test is empty"
            if test_fraction > 0
            else "no split in the data: no test split (test fraction 0)"
        )
    train = split == "train"
    if "val" in split:
        report.notes.append("validation split taken from the data")
    elif val_fraction > 0 and train.any():
        if codes is None:
            codes = _groups(df, val_split, block_km, report)
        val = np.zeros(len(df), dtype=bool)
        val[train] = pick_groups(codes[train], val_fraction, rng)
        split[val] = "val"
        if not val.any():
            report.notes.append("too few groups to carve a validation split: val is empty")
    if not (split == "train").any():
        report.notes.append("no training records")
    return df.assign(split=pd.Series(split, index=df.index, dtype="str"))


# ------------------------------------------------------------------------------ entry point


def locate_image(source: str | os.PathLike, image: str | os.PathLike) -> tuple[float, float] | None:
    """One photo's true (lat, lon) in a dataset, by id (the file's stem) or path, without
    building the manifest: no image index, no zip opened, no check of the other rows (what
    `geovit map/explain --data` needs). None when the dataset lists no valid location for it."""
    path = Path(source).expanduser().resolve()
    photo = Path(image).expanduser().resolve()
    fmt = detect_format(path)
    if fmt == "exif":
        latlon: tuple[float, float] | str = "not_listed"
        if photo.is_relative_to(path) and photo.is_file():
            try:
                latlon = exif_latlon(str(photo))
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
                latlon = "unreadable_image"
        lat, lon = ([latlon[0]], [latlon[1]]) if isinstance(latlon, tuple) else ([], [])
    elif fmt == "table":
        df = read_table(path, ManifestReport(source=str(path), fmt=fmt), need_images=False)
        named = df["image"].str.endswith(photo.name, na=False)  # resolve only the candidates
        same = named & df["image"].where(named).map(lambda r: isinstance(r, str)
                                                    and Path(r).resolve() == photo)  # fmt: skip
        rows = df[(df["id"] == photo.stem) | same.astype(bool)]
        lat, lon = rows["latitude"], rows["longitude"]
    else:
        root = path if fmt == "osv5m" else _mini_root(path)
        suffix = "" if fmt == "osv5m" else "_mini"
        frames = [
            pd.read_csv(csv, usecols=["id", "latitude", "longitude"], dtype=str, engine="pyarrow")
            for csv in (root / f"{split}{suffix}.csv" for split in ("train", "test"))
            if csv.is_file()
        ]
        rows = pd.concat(frames, ignore_index=True)
        rows = rows[rows["id"] == photo.stem]
        lat, lon = rows["latitude"], rows["longitude"]
    lat, lon, ok = _coordinates_ok(lat, lon)
    return (float(lat[ok][0]), float(lon[ok][0])) if ok.any() else None


def _coordinates_ok(lat: pd.Series, lon: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lat = pd.to_numeric(pd.Series(lat), errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(pd.Series(lon), errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        return lat, lon, (np.abs(lat) <= 90) & (np.abs(lon) <= 180)


def load_manifest(
    source: str | os.PathLike,
    *,
    fmt: str = DatasetOptions.layout,
    image_col: str | None = None,
    lat_col: str | None = None,
    lon_col: str | None = None,
    image_template: str | None = None,
    sep: str | None = None,
    encoding: str | None = None,
    need_images: bool = True,
    val_fraction: float = DatasetOptions.val_fraction,
    val_split: str = DatasetOptions.val_split,
    test_fraction: float = 0.1,
    seed: int = DatasetOptions.split_seed,
    block_km: float = 40.0,
    check_images: bool = False,
    keep_columns: Sequence[str] = (),
) -> tuple[pd.DataFrame, ManifestReport]:
    """Read any supported collection into the manifest table (columns: COLUMNS + metadata).

    Images are always checked to exist (cheaply, from a directory/zip index); with
    `check_images` each is also decoded at reduced scale. `val_split` picks the grouping used
    to carve validation (and test, for data without a split): "sequence" keeps a drive's frames
    together, "spatial" keeps ~block_km blocks together, "random" is per image.
    `keep_columns` names further table columns to carry through as text (e.g. an author or
    scene column to group or filter by); a missing one is an error.
    The column options apply to tables only. Without `need_images`, a collection with no image
    at all (a coordinates-only table, CSVs without their images) is read as coordinates; any
    image that is named is still checked, so the splits match those of training.
    """
    if fmt not in FORMATS:
        raise GeovitError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if val_split not in VAL_SPLITS:
        raise GeovitError(f"unknown val_split {val_split!r}; choose one of {', '.join(VAL_SPLITS)}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise GeovitError(f"{name}={value} must be in [0, 1)")
    path = Path(source).expanduser().resolve()
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt != "table" and not path.is_dir():
        raise GeovitError(f"{path}: format {fmt} needs a dataset folder")
    extra = tuple(c for c in keep_columns if c not in COLUMNS)
    if extra and fmt == "exif":
        raise GeovitError(f"{path}: a folder of JPEGs has no column {extra[0]!r}; pass a table")
    table_options = {
        "--image-col": image_col,
        "--lat-col": lat_col,
        "--lon-col": lon_col,
        "--image-template": image_template,
        "--sep": sep,
        "--encoding": encoding,
    }
    given = [name for name, value in table_options.items() if value is not None]
    if given and fmt != "table":
        raise GeovitError(
            f"{', '.join(given)} apply to .csv/.parquet tables, but {path} is read as {fmt}; "
            "pass the table itself as the dataset"
        )
    report = ManifestReport(source=str(path), fmt=fmt)
    if fmt == "osv5m":
        df = read_osv5m(path, report, extra)
    elif fmt == "osv-mini":
        df = read_osv_mini(path, report, extra)
    elif fmt == "table":
        df = read_table(
            path,
            report,
            image_col,
            lat_col,
            lon_col,
            extra,
            image_template,
            need_images=need_images,
            sep=sep,
            encoding=encoding,
        )
    else:
        df = read_exif_folder(path, report)
    report.n_read += len(df)
    images = need_images or df["image"].notna().any()
    if not images:
        report.notes.append("no images: coordinates only (enough for cells, not for training)")
    df = validate(df, report, check_paths=fmt == "table", check_images=check_images, images=images)
    if df.empty:
        reasons = ", ".join(f"{r} {n}" for r, n in report.dropped.items()) or "no records"
        hint = _no_gps_hint(path) if fmt == "exif" else ""
        raise GeovitError(
            f"{path}: no usable records ({report.n_read} read; dropped: {reasons}){hint}"
        )
    df = assign_splits(
        df,
        report,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        val_split=val_split,
        seed=seed,
        block_km=block_km,
    )
    report.splits = {s: int((df["split"] == s).sum()) for s in SPLITS}
    meta = [c for c in dict.fromkeys([*METADATA_COLUMNS, *extra]) if c in df.columns]
    return df[list(COLUMNS) + meta].reset_index(drop=True), report
