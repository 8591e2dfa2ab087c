"""Predictor and `geovit predict` on a randomly initialised small model (plumbing, not accuracy)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import geovit
from geovit.checkpoint import set_temperature
from geovit.cli import app
from geovit.data.images import build_transform, decode_image
from geovit.errors import GeovitError
from geovit.predictor import Prediction, Predictor, expand_images, predict_files


def _reference_probs(predictor: Predictor, photo: Path, temperature: float) -> np.ndarray:
    """softmax(model(eval transform(photo)) / T), from the model and the data module directly."""
    x = build_transform(predictor.image_size, predictor.mean, predictor.std, train=False)(
        decode_image(photo.read_bytes())
    )
    with torch.no_grad():
        logits = predictor.model(x[None]).double()
    return torch.softmax(logits / temperature, dim=-1)[0].numpy()


def test_predict_matches_model_softmax_and_cells(predictor, photos):
    pred = predictor.predict(photos[0], top_k=4)
    assert isinstance(pred, Prediction)
    ref = _reference_probs(predictor, photos[0], 1.0)
    order = np.argsort(-ref)[:4]
    np.testing.assert_array_equal(pred.indices, order)
    np.testing.assert_allclose(pred.probs, ref[order], rtol=1e-5)
    np.testing.assert_allclose(pred.all_probs.sum(), 1.0, rtol=1e-6)
    cells = predictor.cells
    assert pred.tokens == [str(t) for t in cells.tokens[order]]
    assert pred.names == [str(n) for n in cells.names[order]]
    np.testing.assert_array_equal(pred.lat, cells.centroid_lat[order])
    assert (pred.best_lat, pred.best_lon) == (
        cells.centroid_lat[order[0]],
        cells.centroid_lon[order[0]],
    )


def test_predict_accepts_path_pil_bytes_and_lists(predictor, photos):
    by_path = predictor.predict(str(photos[0]))
    by_pil = predictor.predict(Image.open(photos[0]))
    by_bytes = predictor.predict(photos[0].read_bytes())
    for other in (by_pil, by_bytes):
        np.testing.assert_array_equal(other.indices, by_path.indices)
        np.testing.assert_allclose(other.probs, by_path.probs, rtol=1e-5)
    batch = predictor.predict(photos, top_k=3)
    assert isinstance(batch, list) and len(batch) == len(photos)
    for photo, pred in zip(photos, batch, strict=True):
        single = predictor.predict(photo, top_k=3)
        np.testing.assert_array_equal(pred.indices, single.indices)
        np.testing.assert_allclose(pred.probs, single.probs, rtol=1e-4)


def test_predict_many_always_returns_a_list(predictor, photos):
    assert predictor.predict_many([]) == []
    one = predictor.predict_many([photos[0]], top_k=3)
    assert isinstance(one, list) and len(one) == 1
    np.testing.assert_array_equal(one[0].indices, predictor.predict(photos[0], top_k=3).indices)
    many = predictor.predict_many(tuple(photos), top_k=3)
    assert [p.indices.tolist() for p in many] == [
        p.indices.tolist() for p in predictor.predict(photos, top_k=3)
    ]


def test_temperature_is_applied_and_loaded(tiny_checkpoint, predictor, photos, tmp_path):
    assert predictor.temperature == 1.0
    hot_path = shutil.copy(tiny_checkpoint, tmp_path / "hot.pt")
    set_temperature(hot_path, 2.5)
    hot = geovit.load(hot_path, device="cpu")
    assert hot.temperature == 2.5
    pred = hot.predict(photos[1], top_k=3)
    np.testing.assert_allclose(
        pred.all_probs, _reference_probs(predictor, photos[1], 2.5), rtol=1e-5
    )
    with pytest.raises(GeovitError, match="temperature"):
        Predictor(hot.model, hot.cells, hot.mean, hot.std, hot.image_size, temperature=0.0)


def test_unreadable_image_is_a_clear_error(predictor, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(GeovitError, match="decode"):
        predictor.predict(bad)
    with pytest.raises(GeovitError, match=r"missing\.jpg"):
        predictor.predict(tmp_path / "missing.jpg")


def test_expand_images_files_folders_globs(tmp_path, photos):
    folder = tmp_path / "shots"
    (folder / "sub").mkdir(parents=True)
    a = Path(shutil.copy(photos[0], folder / "a.jpg"))
    b = Path(shutil.copy(photos[1], folder / "sub" / "b.JPG"))
    (folder / "notes.txt").write_text("not an image")
    paths, problems = expand_images([str(folder)])
    assert paths == [str(a), str(b)] and problems == []
    paths, problems = expand_images([str(folder / "*.jpg"), str(a), str(tmp_path / "nope.jpg")])
    assert paths == [str(a)]  # duplicates collapse
    assert problems == [(str(tmp_path / "nope.jpg"), "no such file or folder")]
    _, problems = expand_images([str(tmp_path / "*.png")])
    assert problems[0][1] == "pattern matches no files"


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"\xff\xd8\xff\xe0 truncated", "decode"), (b"", "empty"), (b"%!PS-Adobe-3.0", "accepted")],
)
def test_predict_files_keeps_going_past_bad_images(predictor, photos, tmp_path, content, words):
    """A zero-byte file used to crash the whole call (the good images were lost)."""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    paths = [str(photos[0]), str(bad), str(photos[1])]
    predictor.batch_size = 2  # the bad file sits inside a batch and at a batch edge
    try:
        results = predict_files(predictor, paths, top_k=2)
    finally:
        predictor.batch_size = 32
    assert [p for p, _ in results] == paths
    assert isinstance(results[1][1], str) and words in results[1][1]
    for (_, pred), photo in zip([results[0], results[2]], [photos[0], photos[1]], strict=True):
        np.testing.assert_array_equal(pred.indices, predictor.predict(photo, top_k=2).indices)


def test_cli_predict_json_and_partial_failure(tiny_checkpoint, photos, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    runner = CliRunner()
    args = [
        "predict",
        "-c",
        str(tiny_checkpoint),
        str(photos[0]),
        str(bad),
        "--top-k",
        "3",
        "--format",
        "json",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    body = json.loads(res.stdout)
    ok = [r for r in body if "error" not in r]
    assert [r["image"] for r in ok] == [str(photos[0])]
    assert len(ok[0]["top_k"]) == 3
    assert [r["rank"] for r in ok[0]["top_k"]] == [1, 2, 3]
    probs = [r["probability"] for r in ok[0]["top_k"]]
    assert probs == sorted(probs, reverse=True)
    assert ok[0]["best_guess"] == {"lat": ok[0]["top_k"][0]["lat"], "lon": ok[0]["top_k"][0]["lon"]}
    assert [r["image"] for r in body if "error" in r] == [str(bad)]
    assert "bad.jpg" in res.stderr

    res = runner.invoke(
        app, ["predict", "-c", str(tiny_checkpoint), str(photos[0]), "--format", "table"]
    )
    assert res.exit_code == 0, res.output
    assert "best guess" in res.stdout and str(ok[0]["top_k"][0]["token"]) in res.stdout


def test_cli_predict_geojson(tiny_checkpoint, predictor, photos):
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "-c",
            str(tiny_checkpoint),
            str(photos[0]),
            str(photos[1]),
            "-k",
            "2",
            "-f",
            "geojson",
        ],
    )
    assert res.exit_code == 0, res.output
    fc = json.loads(res.stdout)
    assert fc["type"] == "FeatureCollection"
    polygons = [f for f in fc["features"] if f["geometry"]["type"] == "Polygon"]
    points = [f for f in fc["features"] if f["geometry"]["type"] == "Point"]
    assert len(polygons) == 4 and len(points) == 2
    plat, plon = predictor.cells.polygons()
    for f in polygons:
        ring = np.array(f["geometry"]["coordinates"][0])
        np.testing.assert_array_equal(ring[0], ring[-1])  # closed
        i = f["properties"]["index"]
        assert f["properties"]["token"] == predictor.cells.tokens[i]
        assert 0 < f["properties"]["probability"] <= 1
        # [lon, lat] order: every S2 corner of the cell is on the ring
        for la, lo in zip(plat[i], plon[i], strict=True):
            assert np.min(np.hypot(ring[:, 0] - lo, ring[:, 1] - la)) < 1e-4
    pred = predictor.predict(photos[0], top_k=1)
    assert points[0]["geometry"]["coordinates"] == [pred.best_lon, pred.best_lat]


def test_cli_predict_nothing_to_do(tiny_checkpoint, tmp_path):
    res = CliRunner().invoke(
        app, ["predict", "-c", str(tiny_checkpoint), str(tmp_path / "none*.jpg")]
    )
    assert res.exit_code == 2
    assert "no images to predict" in res.stderr


def test_bytes_of_png_are_supported(predictor, photos):
    buf = io.BytesIO()
    Image.open(photos[2]).save(buf, format="PNG")
    np.testing.assert_array_equal(
        predictor.predict(buf.getvalue()).indices, predictor.predict(photos[2]).indices
    )


def test_cli_predict_reads_osv5m_zip_archives_and_members(
    tiny_checkpoint, predictor, photos, tmp_path
):
    """`00.zip` predicts every image inside, `00.zip::ID.jpg` one; both as the files themselves."""
    import zipfile

    archive = tmp_path / "00.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for photo in photos:
            z.write(photo, photo.name)
        z.writestr("readme.txt", "not an image")
    member = f"{archive}::{photos[1].name}"
    missing = f"{archive}::nope.jpg"
    args = ["predict", "-c", str(tiny_checkpoint), str(archive), member, missing, "-f", "json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output  # the missing member only
    body = {r["image"]: r for r in json.loads(res.stdout)}
    assert list(body) == [f"{archive}::{p.name}" for p in photos] + [missing]
    assert "nope.jpg" in body[missing]["error"]
    for photo in photos:
        want = predictor.predict(photo.read_bytes(), top_k=5)
        got = body[f"{archive}::{photo.name}"]["top_k"]
        assert [r["index"] for r in got] == want.indices.tolist()
        np.testing.assert_allclose([r["probability"] for r in got], want.probs, rtol=1e-6)


def test_threads_option_and_default_split_cores_with_workers(tiny_checkpoint, photos, monkeypatch):
    from geovit.cli._common import default_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored after the test: the CLI sets it
    assert [default_threads(w) for w in (0, 1, 3, 7, 16)] == [8, 4, 2, 1, 1]
    assert default_threads(1, processes=2) == 2 and default_threads(0, processes=16) == 1
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            args = ["predict", "-c", str(tiny_checkpoint), str(photos[0]), "--threads", str(n)]
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, res.output
            assert torch.get_num_threads() == n
        res = CliRunner().invoke(app, ["predict", "-c", str(tiny_checkpoint), str(photos[0])])
        assert res.exit_code == 0 and torch.get_num_threads() == 8  # the 8 "usable" cores
    finally:
        torch.set_num_threads(before)


def test_expand_images_takes_an_existing_file_with_double_colon_as_a_file(tmp_path, photos):
    odd = Path(shutil.copy(photos[0], tmp_path / "shot::1.jpg"))
    paths, problems = expand_images([str(odd)])
    assert paths == [str(odd)] and problems == []
