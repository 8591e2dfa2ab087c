"""Manifests: every layout, every validation reason, and leakage-safe splits."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import ExifTags, Image

from geovit.data.manifest import (
    load_manifest,
    pick_groups,
    read_image_bytes,
    spatial_blocks,
)
from geovit.errors import GeovitError

# ids beyond 2**53: a float64 round trip would change them (OSV-5M ids look like this)
BIG_IDS = [str(10**17 + 3 * k + 1) for k in range(6)]


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (24, 16), exif=None) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def write_jpeg(path: Path, seed: int = 0, exif=None) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = jpeg_bytes(seed, exif=exif)
    path.write_bytes(data)
    return data


def osv_frame(ids: list[str], seq: list[str] | None = None) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "id": ids,
            "latitude": np.linspace(40.0, 45.0, n),
            "longitude": np.linspace(-3.0, 7.0, n),
            "thumb_original_url": ["http://x"] * n,
            "country": ["FR"] * n,
            "region": ["Bretagne"] * n,
            "sub-region": ["Finistere"] * n,
            "city": [f"c{i}" for i in range(n)],
            "sequence": seq if seq is not None else [f"s{i}" for i in range(n)],
            "unique_country": ["FR"] * n,
            "unique_city": [f"FR_c{i}" for i in range(n)],
        }
    )


def test_osv5m_extracted_keeps_big_ids_metadata_and_own_split(tmp_path: Path) -> None:
    osv_frame(BIG_IDS[:4]).to_csv(tmp_path / "train.csv", index=False)
    osv_frame(BIG_IDS[4:]).to_csv(tmp_path / "test.csv", index=False)
    for i, id_ in enumerate(BIG_IDS):
        split = "train" if i < 4 else "test"
        write_jpeg(tmp_path / "images" / split / "00" / f"{id_}.jpg", seed=i)
    df, report = load_manifest(tmp_path, val_fraction=0.25, val_split="random")
    assert report.fmt == "osv5m"
    assert sorted(df["id"]) == sorted(BIG_IDS)
    assert list(df.columns[:5]) == ["id", "image", "latitude", "longitude", "split"]
    assert {"sub-region", "unique_country", "unique_city", "sequence"} <= set(df.columns)
    assert "thumb_original_url" not in df.columns
    assert set(df.loc[df["id"].isin(BIG_IDS[4:]), "split"]) == {"test"}
    assert sorted(df["split"]) == ["test", "test", "train", "train", "train", "val"]
    for id_, ref in zip(df["id"], df["image"], strict=True):
        assert Path(ref).name == f"{id_}.jpg" and Path(ref).is_file()
    assert df["latitude"].dtype == np.float64
    assert report.n_read == 6 and report.n_dropped == 0


def test_osv5m_zipped_images_are_indexed_without_extracting(tmp_path: Path) -> None:
    osv_frame(BIG_IDS[:4]).to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "images" / "train").mkdir(parents=True)
    written = {}
    with zipfile.ZipFile(tmp_path / "images" / "train" / "00.zip", "w") as zf:
        for i, id_ in enumerate(BIG_IDS[:2]):
            written[id_] = jpeg_bytes(i)
            zf.writestr(f"train/00/{id_}.jpg", written[id_])
    with zipfile.ZipFile(tmp_path / "images" / "train" / "01.zip", "w") as zf:
        for i, id_ in enumerate(BIG_IDS[2:3], start=2):
            written[id_] = jpeg_bytes(i)
            zf.writestr(f"{id_}.jpg", written[id_])
    df, report = load_manifest(tmp_path, val_fraction=0.0)
    assert list(report.dropped) == ["missing_image"] and report.examples["missing_image"] == [
        BIG_IDS[3]
    ]
    assert len(df) == 3 and set(df["split"]) == {"train"}
    assert list(tmp_path.glob("images/train/*.jpg")) == []
    for id_, ref in zip(df["id"], df["image"], strict=True):
        assert "::" in ref
        assert read_image_bytes(ref) == written[id_]


@pytest.mark.parametrize("point_at_osv5m", [False, True])
def test_osv_mini_layout(tmp_path: Path, point_at_osv5m: bool) -> None:
    root = tmp_path / "osv5m"
    root.mkdir()
    osv_frame(BIG_IDS[:3]).to_csv(root / "train_mini.csv", index=False)
    osv_frame(BIG_IDS[3:5]).to_csv(root / "test_mini.csv", index=False)
    states = ["Texas", "Idaho", "Nevada"]
    for i, id_ in enumerate(BIG_IDS[:5]):
        folder = "train_images" if i < 3 else "test_images"
        write_jpeg(root / folder / states[i % 3] / f"{id_}.jpg", seed=i)
    df, report = load_manifest(root if point_at_osv5m else tmp_path, val_fraction=0.0)
    assert report.fmt == "osv-mini"
    assert dict(zip(df["id"], df["split"], strict=True)) == {
        **{i: "train" for i in BIG_IDS[:3]},
        **{i: "test" for i in BIG_IDS[3:5]},
    }
    assert all(Path(p).parent.parent.name in ("train_images", "test_images") for p in df["image"])


def test_table_with_aliases_relative_paths_and_split(tmp_path: Path) -> None:
    for i in range(4):
        write_jpeg(tmp_path / "pics" / f"{i}.jpg", seed=i)
    table = pd.DataFrame(
        {
            "FilePath": [f"pics/{i}.jpg" for i in range(4)],
            "Lat": [10.0, 20.0, 30.0, 40.0],
            "lng": [1.0, 2.0, 3.0, 4.0],
            "Split": ["train", "Validation", "TEST", "train"],
            "city": ["a", "b", "c", "d"],
        }
    )
    table.to_csv(tmp_path / "photos.csv", index=False)
    df, report = load_manifest(tmp_path / "photos.csv")
    assert report.fmt == "table"
    assert list(df["split"]) == ["train", "val", "test", "train"]
    assert list(df["image"]) == [str(tmp_path / "pics" / f"{i}.jpg") for i in range(4)]
    assert list(df["id"]) == [f"pics/{i}.jpg" for i in range(4)]
    assert list(df["latitude"]) == [10.0, 20.0, 30.0, 40.0]
    assert list(df["city"]) == ["a", "b", "c", "d"]
    assert "validation split taken from the data" in report.notes


def test_keep_columns_carries_table_and_osv_columns_through(tmp_path: Path) -> None:
    for i in range(3):
        write_jpeg(tmp_path / f"{i}.jpg", seed=i)
    table = pd.DataFrame(
        {
            "path": [f"{i}.jpg" for i in range(3)],
            "latitude": [1.0, 2.0, 3.0],
            "longitude": [4.0, 5.0, 6.0],
            "author": ["ann", "bob", "ann"],
            "scene": ["urban", "indoor", "natural"],
        }
    )
    table.to_csv(tmp_path / "t.csv", index=False)
    df, _ = load_manifest(tmp_path / "t.csv", keep_columns=("author", "scene"), val_fraction=0.0)
    by_image = df.set_index("image")
    assert list(by_image.loc[[str(tmp_path / f"{i}.jpg") for i in range(3)], "author"]) == [
        "ann",
        "bob",
        "ann",
    ]
    assert "scene" not in load_manifest(tmp_path / "t.csv")[0].columns
    with pytest.raises(GeovitError, match=r"no column\(s\) place"):
        load_manifest(tmp_path / "t.csv", keep_columns=("place",))
    (tmp_path / "osv" / "images" / "train").mkdir(parents=True)
    osv = osv_frame(BIG_IDS[:2]).assign(quadtree_10_1000=["a", "b"])
    osv.to_csv(tmp_path / "osv" / "train.csv", index=False)
    for i, ident in enumerate(BIG_IDS[:2]):
        write_jpeg(tmp_path / "osv" / "images" / "train" / f"{ident}.jpg", seed=i)
    df, _ = load_manifest(tmp_path / "osv", keep_columns=("quadtree_10_1000",), val_fraction=0.0)
    assert dict(zip(df["id"], df["quadtree_10_1000"], strict=True)) == {
        BIG_IDS[0]: "a",
        BIG_IDS[1]: "b",
    }


def test_parquet_with_named_columns_and_int_ids(tmp_path: Path) -> None:
    refs = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    for i, ref in enumerate(refs):
        write_jpeg(Path(ref), seed=i)
    pd.DataFrame(
        {"id": [2**60 + 1, 2**60 + 2, 2**60 + 3], "where": refs, "y": [1.0, 2, 3], "x": [4.0, 5, 6]}
    ).to_parquet(tmp_path / "t.parquet")
    df, _ = load_manifest(
        tmp_path / "t.parquet", image_col="where", lat_col="y", lon_col="x", val_fraction=0.0
    )
    assert sorted(df["id"]) == [str(2**60 + k) for k in (1, 2, 3)]
    assert set(df["split"]) <= {"train", "test"}
    with pytest.raises(GeovitError, match="latitude"):
        load_manifest(tmp_path / "t.parquet", image_col="where")
    with pytest.raises(GeovitError, match="nope"):
        load_manifest(tmp_path / "t.parquet", image_col="nope", lat_col="y", lon_col="x")


def gps_exif(lat_dms: tuple, lat_ref: str, lon_dms: tuple, lon_ref: str) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: lat_ref,
        ExifTags.GPS.GPSLatitude: lat_dms,
        ExifTags.GPS.GPSLongitudeRef: lon_ref,
        ExifTags.GPS.GPSLongitude: lon_dms,
    }
    return exif


def test_exif_folder_reads_gps_and_counts_bad_files(tmp_path: Path) -> None:
    # Sydney Opera House (S, E) and a point in the western hemisphere (N, W)
    write_jpeg(tmp_path / "a.jpg", exif=gps_exif((33.0, 51.0, 25.5), "S", (151.0, 12.0, 55.0), "E"))
    write_jpeg(
        tmp_path / "sub" / "b.JPG", exif=gps_exif((40.0, 41.0, 0.0), "N", (74.0, 2.0, 40.2), "W")
    )
    write_jpeg(tmp_path / "c.jpg")  # no GPS
    (tmp_path / "d.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    df, report = load_manifest(tmp_path, val_fraction=0.0, test_fraction=0.0)
    assert report.fmt == "exif"
    assert report.dropped == {"no_gps": 1, "unreadable_image": 1}
    assert report.examples == {"no_gps": ["c.jpg"], "unreadable_image": ["d.jpg"]}
    assert report.n_read == 4
    got = df.set_index("id")
    assert got.loc["a.jpg", "latitude"] == pytest.approx(-(33 + 51 / 60 + 25.5 / 3600), abs=1e-9)
    assert got.loc["a.jpg", "longitude"] == pytest.approx(151 + 12 / 60 + 55 / 3600, abs=1e-9)
    assert got.loc["sub/b.JPG", "latitude"] == pytest.approx(40 + 41 / 60, abs=1e-9)
    assert got.loc["sub/b.JPG", "longitude"] == pytest.approx(
        -(74 + 2 / 60 + 40.2 / 3600), abs=1e-9
    )


def test_each_validation_reason_is_counted(tmp_path: Path) -> None:
    good = [write_jpeg(tmp_path / f"g{i}.jpg", seed=i) for i in range(3)]
    assert good
    (tmp_path / "corrupt.jpg").write_bytes(jpeg_bytes(9)[:40])
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("inner/z.jpg", jpeg_bytes(7))
    rows = [
        ("ok0", "g0.jpg", "1", "1", "train"),
        ("ok1", "g1.jpg", "2", "2", "train"),
        ("okzip", "a.zip::inner/z.jpg", "3", "3", "train"),
        ("", "g2.jpg", "1", "1", "train"),  # missing id
        ("blank", "g2.jpg", "", "1", "train"),
        ("text", "g2.jpg", "1", "east", "train"),
        ("north", "g2.jpg", "90.5", "1", "train"),
        ("west", "g2.jpg", "1", "-180.01", "train"),
        ("ok0", "g2.jpg", "1", "1", "train"),  # duplicate id
        ("gone", "missing.jpg", "1", "1", "train"),
        ("gonezip", "a.zip::inner/other.jpg", "1", "1", "train"),
        ("badsplit", "g2.jpg", "1", "1", "holdout"),
        ("broken", "corrupt.jpg", "1", "1", "test"),
    ]
    pd.DataFrame(rows, columns=["id", "image", "latitude", "longitude", "split"]).to_csv(
        tmp_path / "m.csv", index=False
    )
    df, report = load_manifest(tmp_path / "m.csv", check_images=True, val_fraction=0.0)
    assert report.dropped == {
        "unknown_split": 1,
        "missing_id": 1,
        "nan_coordinates": 2,
        "out_of_range": 2,
        "duplicate_id": 1,
        "missing_image": 2,
        "unreadable_image": 1,
    }
    assert report.examples["nan_coordinates"] == ["blank", "text"]
    assert report.examples["missing_image"] == [
        str(tmp_path / "missing.jpg"),
        f"{tmp_path / 'a.zip'}::inner/other.jpg",
    ]
    assert report.n_read == len(rows) and report.n_kept == 3 == len(df)
    assert sorted(df["id"]) == ["ok0", "ok1", "okzip"]
    assert df.set_index("id").loc["ok0", "image"] == str(tmp_path / "g0.jpg")
    text = "\n".join(report.lines())
    assert all(reason in text for reason in report.dropped)

    # without check_images the truncated file is only caught later, by the data loader
    df2, report2 = load_manifest(tmp_path / "m.csv", val_fraction=0.0)
    assert "unreadable_image" not in report2.dropped and "broken" in set(df2["id"])


def test_nothing_usable_and_bad_inputs_fail_with_one_line(tmp_path: Path) -> None:
    pd.DataFrame({"id": ["1"], "latitude": [1.0], "longitude": [2.0]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    with pytest.raises(GeovitError, match="no usable records") as err:
        load_manifest(tmp_path)
    assert "\n" not in str(err.value) and "missing_image 1" in str(err.value)
    pd.DataFrame({"id": ["1"], "lat": [1.0]}).to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(GeovitError, match="missing column"):
        load_manifest(tmp_path)
    with pytest.raises(GeovitError, match="no such file"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(GeovitError, match="val_split"):
        load_manifest(tmp_path, val_split="by-hand")


def table_for_splits(tmp_path: Path, n_seq: int = 40, seed: int = 1) -> tuple[Path, pd.DataFrame]:
    """A table of n_seq drives of 1-9 frames; each drive's frames are a few metres apart."""
    rng = np.random.default_rng(seed)
    write_jpeg(tmp_path / "x.jpg")
    rows = []
    for s in range(n_seq):
        lat0, lon0 = rng.uniform(30, 50), rng.uniform(-120, -70)
        for f in range(int(rng.integers(1, 10))):
            rows.append((f"s{s}f{f}", "x.jpg", lat0 + 1e-4 * f, lon0, f"seq{s}"))
    table = pd.DataFrame(rows, columns=["id", "image", "latitude", "longitude", "sequence"])
    table.to_csv(tmp_path / "t.csv", index=False)
    return tmp_path / "t.csv", table


def test_sequence_split_never_splits_a_sequence_and_is_seeded(tmp_path: Path) -> None:
    path, table = table_for_splits(tmp_path)
    df, report = load_manifest(path, val_split="sequence", val_fraction=0.2, test_fraction=0.2)
    sides = df.groupby("sequence")["split"].nunique()
    assert (sides == 1).all()
    counts = df["split"].value_counts()
    n = len(table)
    assert set(counts.index) == {"train", "val", "test"}
    assert abs(counts["test"] - 0.2 * n) <= 9 and abs(counts["val"] - 0.2 * 0.8 * n) <= 9
    again, _ = load_manifest(path, val_split="sequence", val_fraction=0.2, test_fraction=0.2)
    pd.testing.assert_frame_equal(df, again)
    other, _ = load_manifest(path, val_split="sequence", val_fraction=0.2, seed=5)
    assert not other["split"].equals(df["split"])
    assert report.splits == {s: int(counts.get(s, 0)) for s in ("train", "val", "test")}


def test_random_split_takes_exact_fraction(tmp_path: Path) -> None:
    path, table = table_for_splits(tmp_path)
    df, _ = load_manifest(path, val_split="random", val_fraction=0.1, test_fraction=0.0)
    n = len(table)
    assert (df["split"] == "val").sum() == round(0.1 * n)
    assert (df["split"] == "test").sum() == 0


def haversine_km(lat1, lon1, lat2, lon2):
    p1, p2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(h))


def test_spatial_blocks_are_compact_and_not_tiny() -> None:
    rng = np.random.default_rng(0)
    z = rng.uniform(-0.99, 0.99, 4000)  # uniform on the sphere, away from the poles
    lat, lon = np.degrees(np.arcsin(z)), rng.uniform(-180, 180, 4000)
    # neighbours a few km away: mostly in the same 40 km block
    lat2, lon2 = lat + rng.normal(0, 0.01, 4000), lon
    same = spatial_blocks(lat, lon, 40.0) == spatial_blocks(lat2, lon2, 40.0)
    assert same.mean() > 0.9
    # anything in one block lies within its diagonal (40 km * sqrt(2), plus curvature slack)
    blocks = spatial_blocks(lat, lon, 400.0)
    i, j = np.triu_indices(len(lat), 1)
    together = blocks[i] == blocks[j]
    assert together.sum() > 0
    d = haversine_km(lat[i[together]], lon[i[together]], lat[j[together]], lon[j[together]])
    assert d.max() < 400.0 * np.sqrt(2) * 1.05


def test_spatial_split_keeps_blocks_on_one_side(tmp_path: Path) -> None:
    path, _ = table_for_splits(tmp_path, n_seq=60)
    df, _ = load_manifest(path, val_split="spatial", val_fraction=0.3, block_km=50.0)
    blocks = spatial_blocks(df["latitude"].to_numpy(), df["longitude"].to_numpy(), 50.0)
    assert (pd.Series(df["split"].to_numpy()).groupby(blocks).nunique() == 1).all()
    n_val = (df["split"] == "val").sum()
    assert 0.15 * len(df) < n_val < 0.45 * len(df)


def test_sequence_split_without_sequences_falls_back_to_spatial(tmp_path: Path) -> None:
    path, table = table_for_splits(tmp_path)
    table.drop(columns="sequence").to_csv(path, index=False)
    by_seq, report = load_manifest(path, val_split="sequence")
    by_space, _ = load_manifest(path, val_split="spatial")
    assert any("spatial" in note for note in report.notes)
    pd.testing.assert_frame_equal(by_seq, by_space)


def test_pick_groups_takes_whole_groups() -> None:
    codes = np.repeat(np.arange(10), np.arange(1, 11))  # group k has k+1 members
    taken = pick_groups(codes, 0.3, np.random.default_rng(0))
    for k in range(10):
        assert len(set(taken[codes == k])) == 1
    assert abs(taken.sum() - 0.3 * len(codes)) <= 10 / 2 + 1


def test_column_options_and_image_template_for_id_tables(tmp_path: Path) -> None:
    for i in range(3):
        write_jpeg(tmp_path / "images" / f"{100 + i}.jpg", seed=i)
    pd.DataFrame(
        {"id": ["100", "101", "102"], "pos_y": [1.0, 2, 3], "pos_x": [4.0, 5, 6], "kind": "a"}
    ).to_csv(tmp_path / "t.csv", index=False)
    kw = {"lat_col": "pos_y", "lon_col": "pos_x", "val_fraction": 0.0, "test_fraction": 0.0}
    df, _ = load_manifest(tmp_path / "t.csv", image_template="images/{id}.jpg", **kw)
    assert list(df["image"]) == [str(tmp_path / "images" / f"{100 + i}.jpg") for i in range(3)]
    assert list(df["latitude"]) == [1.0, 2.0, 3.0] and list(df["id"]) == ["100", "101", "102"]
    # each missing-column error names the option that fixes it
    with pytest.raises(GeovitError, match=r"--image-col, or build paths .* --image-template"):
        load_manifest(tmp_path / "t.csv", **kw)
    with pytest.raises(GeovitError, match=r"no latitude column .* --lat-col"):
        load_manifest(tmp_path / "t.csv", image_template="images/{id}.jpg")
    with pytest.raises(GeovitError, match=r"'where' \(--image-col\) not in table"):
        load_manifest(tmp_path / "t.csv", image_col="where", **kw)
    with pytest.raises(GeovitError, match=r"--image-template .* not in table: ident"):
        load_manifest(tmp_path / "t.csv", image_template="images/{ident}.jpg", **kw)
    # on a dataset folder the table options cannot apply: say so instead of ignoring them
    (tmp_path / "train.csv").write_text("id,latitude,longitude\n100,1,4\n")
    with pytest.raises(GeovitError, match=r"--lat-col, --lon-col apply to \.csv/\.parquet tables"):
        load_manifest(tmp_path, lat_col="pos_y", lon_col="pos_x")


def test_coordinates_only_table_when_images_are_not_needed(tmp_path: Path) -> None:
    pd.DataFrame({"lat": [1.0, 2.0, 95.0], "lon": [4.0, 5.0, 6.0]}).to_csv(
        tmp_path / "points.csv", index=False
    )
    df, report = load_manifest(tmp_path / "points.csv", need_images=False, test_fraction=0.0)
    assert list(df["latitude"]) == [1.0, 2.0] and df["image"].isna().all()
    assert report.dropped == {"out_of_range": 1} and list(df["id"]) == ["0", "1"]
    assert any("coordinates only" in note for note in report.notes)
    with pytest.raises(GeovitError, match="no image path column"):
        load_manifest(tmp_path / "points.csv")


def test_folder_without_gps_hints_at_a_table(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "a.jpg")
    write_jpeg(tmp_path / "b.jpg", seed=1)
    (tmp_path / "labels.csv").write_text("image,lat,lon\na.jpg,1,2\n")
    with pytest.raises(GeovitError, match=r"no_gps 2.*table.*labels\.csv found there") as err:
        load_manifest(tmp_path)
    assert "\n" not in str(err.value)


def test_test_split_note_says_what_was_held_out(tmp_path: Path) -> None:
    """Three photos a few metres apart form one spatial block: nothing can go to test."""
    for i in range(3):
        exif = gps_exif((48.0, 51.0, 24.0 + i), "N", (2.0, 21.0, 3.0), "E")
        write_jpeg(tmp_path / f"{i}.jpg", seed=i, exif=exif)
    df, report = load_manifest(tmp_path, val_fraction=0.0)
    assert (df["split"] == "train").all()
    assert not any("10% held out" in note for note in report.notes)
    assert any("test is empty" in note for note in report.notes)
    path, _ = table_for_splits(tmp_path / "many")
    df, report = load_manifest(path, val_fraction=0.0, val_split="random")
    n_test = int((df["split"] == "test").sum())
    assert (
        n_test > 0
        and f"{n_test} records ({n_test / len(df):.0%}) held out as test" in "\n".join(report.notes)
    )


def test_missing_or_invalid_gps_hemisphere_is_dropped_not_placed_north_east(
    tmp_path: Path,
) -> None:
    """40.5, -105.5 (Colorado) without its W ref used to land at 40.5, 105.5 in China."""
    write_jpeg(tmp_path / "ok.jpg", exif=gps_exif((40.0, 30.0, 0.0), "N", (105.0, 30.0, 0.0), "W"))
    write_jpeg(
        tmp_path / "no_ref.jpg", exif=gps_exif((40.0, 30.0, 0.0), "N", (105.0, 30.0, 0.0), "")
    )
    write_jpeg(
        tmp_path / "bad_ref.jpg", exif=gps_exif((40.0, 30.0, 0.0), "X", (105.0, 30.0, 0.0), "W")
    )
    df, report = load_manifest(tmp_path, val_fraction=0.0, test_fraction=0.0)
    assert report.dropped == {"bad_gps_ref": 2}
    assert sorted(report.examples["bad_gps_ref"]) == ["bad_ref.jpg", "no_ref.jpg"]
    assert df["id"].tolist() == ["ok.jpg"]
    assert (df["latitude"].iloc[0], df["longitude"].iloc[0]) == pytest.approx((40.5, -105.5))


@pytest.mark.parametrize("layout", ["exif", "osv5m"])
def test_symlink_loops_are_walked_once_and_reported(tmp_path: Path, layout: str) -> None:
    """A link back to a parent used to be followed ~40 levels deep (3 files -> 123 records)."""
    root = tmp_path / "data"
    images = root / "images" / "train" if layout == "osv5m" else root
    exif = gps_exif((40.0, 30.0, 0.0), "N", (105.0, 30.0, 0.0), "W")
    for i, folder in enumerate(["sub", "sub", "leaf"]):
        write_jpeg(images / folder / f"{i}.jpg", seed=i, exif=exif)
    (images / "sub" / "loop").symlink_to(images, target_is_directory=True)  # a loop
    (images / "again").symlink_to(images / "leaf", target_is_directory=True)  # a duplicate
    if layout == "osv5m":
        osv_frame(["0", "1", "2"]).to_csv(root / "train.csv", index=False)
    df, report = load_manifest(root, val_fraction=0.0, test_fraction=0.0)
    assert len(df) == 3 and report.n_read == 3
    note = next(n for n in report.notes if "linked folder" in n)
    assert note.startswith("skipped 2 linked folder(s)")


def _places_frame(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "latitude": np.linspace(40.0, 48.0, n),
            "longitude": np.linspace(-3.0, 9.0, n),
            "city": ["Zürich", "Besançon", "Málaga"] * (n // 3),
        }
    )


def test_empty_latin1_and_semicolon_csvs_give_one_line_errors_or_read(tmp_path: Path) -> None:
    """These used to end in pandas/pyarrow tracebacks (EmptyDataError, invalid UTF8, column
    count); the reference reads are pandas' own with the right options."""
    kw = {"need_images": False, "val_fraction": 0.0, "test_fraction": 0.0}
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(GeovitError, match=r"empty\.csv is empty"):
        load_manifest(empty, **kw)

    frame = _places_frame()
    latin = tmp_path / "latin.csv"
    frame.to_csv(latin, index=False, encoding="latin-1")
    with pytest.raises(GeovitError, match=r"not utf-8 text .*--encoding latin-1") as err:
        load_manifest(latin, **kw)
    assert "\n" not in str(err.value)
    df, _ = load_manifest(latin, encoding="latin-1", **kw)
    ref = pd.read_csv(latin, encoding="latin-1")
    assert list(df["city"]) == list(ref["city"]) == list(frame["city"])
    with pytest.raises(GeovitError, match=r"--encoding 'latin-9000' is not a known"):
        load_manifest(latin, encoding="latin-9000", **kw)

    semi = tmp_path / "semi.csv"
    frame.to_csv(semi, index=False, sep=";")
    ref = pd.read_csv(semi, sep=";")
    for sep in (None, ";"):  # sniffed, or given
        df, _ = load_manifest(semi, sep=sep, **kw)
        np.testing.assert_allclose(df["latitude"], ref["latitude"])
        assert list(df["city"]) == list(ref["city"])
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("latitude|longitude\n1|2\n3|4|5\n")
    with pytest.raises(GeovitError, match=r"one column 'latitude\|longitude' on ',';.* --sep"):
        load_manifest(ragged, **kw)  # not sniffed (ragged): one column names the fix
    with pytest.raises(GeovitError, match=r"separated by '\|' .* --sep") as err:
        load_manifest(ragged, sep="|", **kw)
    assert "\n" not in str(err.value)
    folder = tmp_path / "osv"
    folder.mkdir()
    (folder / "train.csv").write_text("id,latitude,longitude\n100,1,4\n")
    with pytest.raises(GeovitError, match=r"--sep apply to \.csv/\.parquet tables"):
        load_manifest(folder, sep=";")


def test_cli_sep_and_encoding_options_reach_the_table_reader(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from geovit.cells import CellPartition
    from geovit.cli import app

    table = tmp_path / "points.csv"
    _places_frame(60).to_csv(table, index=False, sep="\t", encoding="latin-1")
    out = tmp_path / "cells.parquet"
    args = ["cells", "build", str(table), "--all", "--t1", "20", "--t2", "1", "-o", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "--encoding latin-1" in res.stderr and not out.exists()
    res = CliRunner().invoke(app, [*args, "--sep", "\t", "--encoding", "latin-1"])
    assert res.exit_code == 0, res.output
    assert set(CellPartition.load(out).names) <= {"Zürich", "Besançon", "Málaga"}


def test_an_existing_file_with_double_colon_in_its_name_is_a_file(tmp_path: Path) -> None:
    """ "shot::1.jpg" used to be read as member "1.jpg" of an archive "shot" (missing_image)."""
    plain = write_jpeg(tmp_path / "shot::1.jpg", seed=1)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("inner/z.jpg", jpeg_bytes(7))
    rows = [("colon", "shot::1.jpg"), ("zip", "a.zip::inner/z.jpg")]
    pd.DataFrame(rows, columns=["id", "image"]).assign(latitude=1.0, longitude=2.0).to_csv(
        tmp_path / "m.csv", index=False
    )
    df, report = load_manifest(tmp_path / "m.csv", val_fraction=0.0, test_fraction=0.0)
    assert report.dropped == {} and sorted(df["id"]) == ["colon", "zip"]
    refs = df.set_index("id")["image"]
    assert refs["colon"] == str(tmp_path / "shot::1.jpg")
    assert read_image_bytes(refs["colon"]) == plain == (tmp_path / "shot::1.jpg").read_bytes()
    assert read_image_bytes(refs["zip"]) == jpeg_bytes(7)  # a real member is still a member


def test_locate_image_reads_one_row_without_indexing_or_validating(
    tiny_world, tmp_path, monkeypatch
):
    """The photo's location is its manifest row's, found without the image index, the
    per-image checks or the split assignment that load_manifest runs over every image."""
    import geovit.data.manifest as manifest_module

    manifest, _ = load_manifest(tiny_world)
    row = manifest[manifest["split"] == "test"].iloc[3]

    def forbidden(*a, **k):
        raise AssertionError("the whole dataset was indexed or validated")

    for name in ("index_images", "validate", "assign_splits", "read_image_bytes"):
        monkeypatch.setattr(manifest_module, name, forbidden)
    locate = manifest_module.locate_image
    assert locate(tiny_world, row["image"]) == (row["latitude"], row["longitude"])
    assert locate(tiny_world, tmp_path / "stray.jpg") is None
    # A table: by path (relative to the table) or id; a row without valid coordinates is absent.
    pd.DataFrame(
        {
            "id": ["a", "b"],
            "image": ["x/a.jpg", "x/b.jpg"],
            "lat": ["10.5", "nan"],
            "lon": ["20", "3"],
        }
    ).to_csv(tmp_path / "t.csv", index=False)
    assert locate(tmp_path / "t.csv", tmp_path / "x" / "a.jpg") == (10.5, 20.0)
    assert locate(tmp_path / "t.csv", tmp_path / "elsewhere" / "a.jpg") == (10.5, 20.0)  # by id
    assert locate(tmp_path / "t.csv", tmp_path / "x" / "b.jpg") is None


# One small sample per registered dataset format: a new format adds its writer here and is then
# read, detected and located by the test below (test_every_format_has_a_sample fails until then).
# Each writer makes three photos at SAMPLE_POINTS and returns (dataset path, photo paths).
SAMPLE_POINTS = [(-33.857, 151.215), (40.6892, -74.0445), (48.8584, 2.2945)]


def _dms(value: float) -> tuple[float, float, float]:
    v = abs(value)
    deg, minutes = int(v), (v - int(v)) * 60
    return (float(deg), float(int(minutes)), round((minutes - int(minutes)) * 60, 4))


def _sample_osv(root: Path, csv_name: str, image_dir: str) -> list[Path]:
    ids = ["101", "102", "103"]
    frame = pd.DataFrame({"id": ids, "latitude": [p[0] for p in SAMPLE_POINTS],
                          "longitude": [p[1] for p in SAMPLE_POINTS]})  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / csv_name, index=False)
    photos = [root / image_dir / f"{i}.jpg" for i in ids]
    for seed, path in enumerate(photos):
        write_jpeg(path, seed=seed)
    return photos


def _sample_table(tmp: Path) -> tuple[Path, list[Path]]:
    photos = [tmp / "img" / f"{i}.jpg" for i in range(3)]
    for seed, path in enumerate(photos):
        write_jpeg(path, seed=seed)
    lat, lon = zip(*SAMPLE_POINTS, strict=True)
    table = pd.DataFrame({"image": [f"img/{i}.jpg" for i in range(3)], "lat": lat, "lon": lon})
    table.to_csv(tmp / "t.csv", index=False)
    return tmp / "t.csv", photos


def _sample_exif(tmp: Path) -> tuple[Path, list[Path]]:
    photos = []
    for seed, (lat, lon) in enumerate(SAMPLE_POINTS):
        exif = gps_exif(_dms(lat), "N" if lat >= 0 else "S", _dms(lon), "E" if lon >= 0 else "W")
        write_jpeg(tmp / f"{seed}.jpg", seed=seed, exif=exif)
        photos.append(tmp / f"{seed}.jpg")
    return tmp, photos


FORMAT_SAMPLES = {
    "table": _sample_table,
    "osv5m": lambda tmp: (tmp, _sample_osv(tmp, "test.csv", "images/test")),
    "osv-mini": lambda tmp: (tmp, _sample_osv(tmp / "osv5m", "test_mini.csv", "test_images/x")),
    "exif": _sample_exif,
}


def test_every_format_has_a_sample() -> None:
    from geovit.data.manifest import FORMATS, READERS

    assert set(READERS) == set(FORMAT_SAMPLES)
    assert set(FORMATS) == {"auto", *READERS}  # the CLI's --layout choices (torch/pandas-free)


@pytest.mark.parametrize("fmt", list(FORMAT_SAMPLES))
def test_every_format_is_detected_read_and_located(tmp_path: Path, fmt: str) -> None:
    from geovit.data.manifest import FORMATS, detect_format, locate_image

    source, photos = FORMAT_SAMPLES[fmt](tmp_path)
    assert detect_format(source) == fmt and fmt in FORMATS
    for given in ("auto", fmt):
        df, report = load_manifest(source, fmt=given, val_fraction=0.0, test_fraction=0.0)
        assert report.fmt == fmt and report.n_dropped == 0
        got = {Path(p).resolve(): (la, lo) for p, la, lo in
               zip(df["image"], df["latitude"], df["longitude"], strict=True)}  # fmt: skip
        assert set(got) == {p.resolve() for p in photos}
        for path, (lat, lon) in zip(photos, SAMPLE_POINTS, strict=True):
            assert got[path.resolve()] == pytest.approx((lat, lon), abs=1e-4)
            assert locate_image(source, path) == pytest.approx((lat, lon), abs=1e-4)
    with pytest.raises(GeovitError, match="unknown format 'nope'; choose one of auto, "):
        load_manifest(source, fmt="nope")
