"""The synthetic world: layout, determinism, geography, drives, and images that encode place."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import reverse_geocoder
from PIL import Image
from typer.testing import CliRunner

from geovit.data import synth
from geovit.errors import GeovitError
from geovit.geo import haversine_km
from geovit.metrics import reverse_geocode

# Independent reference: the states' extents (lat_min, lat_max, lon_min, lon_max) from their
# legal boundaries (mostly parallels and meridians), widened by ~0.05 deg for rounding.
STATE_EXTENTS = {
    "Texas": (25.8, 36.55, -106.7, -93.45),
    "Kansas": (36.95, 40.05, -102.1, -94.55),
    "Oregon": (41.95, 46.35, -124.6, -116.4),
    "Nevada": (34.95, 42.05, -120.05, -114.0),
    "Oklahoma": (33.6, 37.05, -103.05, -94.4),
    "Montana": (44.3, 49.05, -116.1, -104.0),
    "Idaho": (41.95, 49.05, -117.3, -111.0),
    "Nebraska": (39.95, 43.05, -104.1, -95.25),
    "New Mexico": (31.3, 37.05, -109.1, -102.95),
    "Wyoming": (40.95, 45.05, -111.1, -104.0),
}
COLUMNS = [
    "id",
    "latitude",
    "longitude",
    "country",
    "sequence",
    "region",
    "sub-region",
    "city",
    "unique_city",
    "unique_sub-region",
    "unique_region",
    "unique_country",
    "synthetic",
]


def read_world(root: Path) -> pd.DataFrame:
    tables = [
        pd.read_csv(root / f"{split}.csv", dtype={"id": str}, keep_default_na=False).assign(
            split=split
        )
        for split in ("train", "test")
    ]
    return pd.concat(tables, ignore_index=True)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_is_osv5m_and_says_synthetic(tiny_world: Path) -> None:
    df = read_world(tiny_world)
    for split in ("train", "test"):
        assert list(pd.read_csv(tiny_world / f"{split}.csv", nrows=1).columns) == COLUMNS
        files = {p.stem for p in (tiny_world / "images" / split).glob("*.jpg")}
        assert files == set(df.loc[df["split"] == split, "id"])
    assert len(df) == 400 and df["id"].is_unique
    assert df["id"].str.fullmatch(r"[1-9]\d{11}").all()  # OSV-5M-like numeric ids
    assert (df["country"] == "US").all() and df["synthetic"].all()
    # the unique_* labels are those the evaluation's geocoder gives the true points
    geocoded = reverse_geocode(df["latitude"].to_numpy(), df["longitude"].to_numpy())
    for col in ("country", "region", "sub-region", "city"):
        assert (df[f"unique_{col}"].to_numpy() == geocoded[col]).mean() > 0.99
    assert (df[["city", "sub-region"]] != "").all().all()
    assert "synthetic" in (tiny_world / "README.md").read_text().lower()
    assert synth.world_info(tiny_world)["counts"]["train"] == (df["split"] == "train").sum()

    for ref in df.sample(20, random_state=0).itertuples():
        data = (tiny_world / "images" / ref.split / f"{ref.id}.jpg").read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG" and img.size == (120, 80)  # 3:2
            assert img.getexif()[0x010E] == "geovit synthetic image"
            assert img.info["comment"] == b"geovit synthetic image"
            assert np.asarray(img.convert("RGB")).std() > 10  # a scene, not a flat fill


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    kwargs = {"n": 40, "image_size": (60, 40)}
    a = file_bytes(synth.generate_world(tmp_path / "a", seed=3, workers=1, **kwargs))
    b = file_bytes(synth.generate_world(tmp_path / "b", seed=3, workers=2, **kwargs))
    c = file_bytes(synth.generate_world(tmp_path / "c", seed=4, workers=1, **kwargs))
    assert a == b
    assert len(a) == 40 + 4  # images + train.csv, test.csv, README.md, world.json
    assert a["train.csv"] != c["train.csv"]
    jpegs = lambda files: {v for k, v in files.items() if k.endswith(".jpg")}  # noqa: E731
    assert not jpegs(a) & jpegs(c)
    assert not list(tmp_path.glob(".*"))  # no temporary folders left behind


def test_locations_lie_in_the_ten_states(tiny_world: Path) -> None:
    df = read_world(tiny_world)
    assert set(df["region"]) <= set(STATE_EXTENTS) and df["region"].nunique() >= 6
    box = np.array([STATE_EXTENTS[r] for r in df["region"]])
    lat, lon = df["latitude"].to_numpy(), df["longitude"].to_numpy()
    assert ((box[:, 0] <= lat) & (lat <= box[:, 1])).all()
    assert ((box[:, 2] <= lon) & (lon <= box[:, 3])).all()
    places = reverse_geocoder.search(list(zip(lat, lon, strict=True)), mode=1, verbose=False)
    assert [p["admin1"] for p in places] == df["region"].tolist()
    assert [p["name"] for p in places] == df["city"].tolist()
    assert [p["admin2"] for p in places] == df["sub-region"].tolist()
    # Towns and countryside: most points are near a settlement, a rural share is far away.
    dist = haversine_km(
        lat, lon, [float(p["lat"]) for p in places], [float(p["lon"]) for p in places]
    )
    assert np.median(dist) < 6 and (dist > 10).mean() > 0.1


def test_sequences_are_short_drives_within_one_split(tiny_world: Path) -> None:
    df = read_world(tiny_world)
    assert (df.groupby("sequence")["split"].nunique() == 1).all()
    sizes = df.groupby("sequence").size()
    assert sizes.max() > 2 and sizes.mean() > 1.5
    assert 0.1 < (df["split"] == "test").mean() < 0.3
    nxt = df.groupby("sequence")[["latitude", "longitude"]].shift(-1).dropna()
    step = haversine_km(
        df.loc[nxt.index, "latitude"],
        df.loc[nxt.index, "longitude"],
        nxt["latitude"],
        nxt["longitude"],
    )
    assert (step > 0.05).all() and (step < 1.0).all()  # a few hundred metres apart


def region_medians(images: np.ndarray, rows: slice) -> np.ndarray:
    """Median colour of the left and right sixth of the image within `rows`: (n, 6)."""
    w = images.shape[2] // 6
    patches = [images[:, rows, :w], images[:, rows, -w:]]
    return np.concatenate([np.median(p.reshape(len(p), -1, 3), axis=1) for p in patches], axis=1)


def knn_predictions(features: np.ndarray, fold: np.ndarray, k: int = 7) -> np.ndarray:
    """Each point's k nearest neighbours in the other folds (standardized features)."""
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    dist[fold[:, None] == fold[None, :]] = np.inf
    return np.argsort(dist, axis=1)[:, :k]


def softmax_regression(x: np.ndarray, y: np.ndarray, n_classes: int, steps: int = 500):
    """Multinomial logistic regression by gradient descent; returns a class predictor."""
    bias = lambda a: np.hstack([a, np.ones((len(a), 1))])  # noqa: E731
    x1, onehot, w = bias(x), np.eye(n_classes)[y], np.zeros((x.shape[1] + 1, n_classes))
    for _ in range(steps):
        z = x1 @ w
        p = np.exp(z - z.max(1, keepdims=True))
        w -= 0.5 * (x1.T @ (p / p.sum(1, keepdims=True) - onehot) / len(x1) + 1e-3 * w)
    return lambda new: (bias(new) @ w).argmax(1)


def test_location_is_recoverable_from_the_landscape_not_the_sky(tiny_world: Path) -> None:
    """Simple colour features of the roadside predict place better than the best constant guess;
    the same features of the sky (random weather) do not."""
    df = read_world(tiny_world)
    images = np.stack(
        [
            np.asarray(Image.open(tiny_world / "images" / s / f"{i}.jpg"))
            for s, i in zip(df["split"], df["id"], strict=True)
        ]
    ).astype(np.float32)
    h = images.shape[1]
    lat, lon = df["latitude"].to_numpy(), df["longitude"].to_numpy()
    fold = pd.factorize(df["sequence"])[0] % 5  # cross-validation holding out whole drives
    ground = region_medians(images, slice(int(0.6 * h), h))
    sky = region_medians(images, slice(0, int(0.15 * h)))

    # Baselines fitted on the other folds: the single best training location, the majority state.
    pair = haversine_km(lat[:, None], lon[:, None], lat[None], lon[None])
    states, y = np.unique(df["region"], return_inverse=True)
    const_err, majority_hit = np.empty(len(df)), np.empty(len(df), dtype=bool)
    for k in range(5):
        train, held = np.flatnonzero(fold != k), fold == k
        best = train[np.argmin(np.median(pair[np.ix_(train, train)], axis=1))]
        const_err[held] = pair[best, held]
        majority_hit[held] = y[held] == np.bincount(y[train]).argmax()

    def knn_error(features: np.ndarray) -> float:
        nn = knn_predictions(features, fold)
        return float(np.median(haversine_km(lat[nn].mean(1), lon[nn].mean(1), lat, lon)))

    assert knn_error(ground) < 0.8 * np.median(const_err)
    assert knn_error(sky) > 0.95 * np.median(const_err)

    # Logistic regression from the roadside colours to the state beats the majority class.
    x = (ground - ground.mean(0)) / ground.std(0)
    hits = np.concatenate(
        [
            softmax_regression(x[fold != k], y[fold != k], len(states))(x[fold == k])
            == y[fold == k]
            for k in range(5)
        ]
    )
    assert hits.mean() > majority_hit.mean() + 0.05


def test_existing_world_is_reused_and_anything_else_refused(tmp_path: Path) -> None:
    out = synth.generate_world(tmp_path / "w", n=30, image_size=(60, 40))
    before = file_bytes(out)
    stamp = (out / "train.csv").stat().st_mtime_ns
    assert synth.generate_world(out, n=30, image_size=(60, 40)) == out
    assert (out / "train.csv").stat().st_mtime_ns == stamp  # reused, not redrawn
    with pytest.raises(GeovitError, match="exists"):
        synth.generate_world(out, n=30, seed=1, image_size=(60, 40))
    synth.generate_world(out, n=30, seed=1, image_size=(60, 40), overwrite=True)
    assert file_bytes(out) != before and synth.world_info(out)["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_a_failure_leaves_no_half_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) > 10:
            raise RuntimeError("disk full")
        return np.zeros((40, 60, 3), np.uint8)

    monkeypatch.setattr(synth, "render_scene", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        synth.generate_world(tmp_path / "w", n=30, image_size=(60, 40), workers=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 5}, "too small"),
        ({"seed": -1}, "seed"),
        ({"image_size": (100, 100)}, "3:2"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"rural_fraction": 2.0}, "rural_fraction"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(GeovitError, match=message):
        synth.generate_world(tmp_path / "w", **{"n": 30, "image_size": (60, 40), **kwargs})
    assert not (tmp_path / "w").exists()


def test_parse_image_size() -> None:
    assert synth.parse_image_size("240x160") == (240, 160)
    with pytest.raises(GeovitError, match="WIDTHxHEIGHT"):
        synth.parse_image_size("240")


def test_cli_synth(tmp_path: Path) -> None:
    from geovit.cli import app

    runner = CliRunner()
    out = tmp_path / "w"
    result = runner.invoke(app, ["synth", "--out", str(out), "--n", "30", "--image-size", "60x40"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "train" in result.output
    assert len(read_world(out)) == 30
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--image-size", "60by40"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
