"""Inference options end to end: test-time crops, --point hybrid/weighted/retrieval through the
Predictor, the CLI (index, predict, evaluate) and the ONNX predictor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms import v2
from typer.testing import CliRunner

import geovit
from geovit.cli import app
from geovit.data.images import TTA_BOXES, build_transform, decode_image, tta_transform
from geovit.errors import GeovitError
from geovit.gallery import Gallery
from geovit.geo import haversine_km
from geovit.points import Weighted

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tiny_world) -> list[Path]:
    return sorted((tiny_world / "images" / "test").glob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def gallery_file(tiny_checkpoint, tiny_world, tmp_path_factory) -> Path:
    """`geovit index` of the tiny world's train split with `tiny_checkpoint`, one image broken."""
    world = tmp_path_factory.mktemp("world") / "world"
    shutil.copytree(tiny_world, world)
    train = pd.read_csv(world / "train.csv")
    (world / "images" / "train" / f"{train['id'].iloc[0]}.jpg").write_bytes(b"not a jpeg")
    out = world.parent / "gallery.faiss"
    res = runner.invoke(
        app, ["index", "-c", str(tiny_checkpoint), "-d", str(world), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "1 unreadable" in res.output
    return out


def test_tta_one_crop_is_the_eval_transform_and_more_average_the_crop_softmaxes(
    tiny_checkpoint, photos
):
    predictor = geovit.load(tiny_checkpoint, device="cpu")
    img = decode_image(photos[0].read_bytes())
    size, mean, std = predictor.image_size, predictor.mean, predictor.std
    plain = build_transform(size, mean, std, train=False)(img)
    assert torch.equal(tta_transform(size, mean, std, 1)(img)[0], plain)
    one = geovit.load(tiny_checkpoint, device="cpu", tta=1)
    assert torch.equal(
        one.predict_proba(one.preprocess(photos[0])[None]), predictor.predict_proba(plain[None])
    )

    n = 4
    tta = geovit.load(tiny_checkpoint, device="cpu", tta=n)
    got = tta.predict_proba(tta.preprocess(photos[0])[None])[0]
    # Reference: crop by slicing the pixels, resize and normalize like the eval transform.
    h, w = img.shape[-2:]
    resize = v2.Compose(
        [
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
    crops = [
        resize(
            img[
                :,
                round(t * h) : round(t * h) + round(bh * h),
                round(left * w) : round(left * w) + round(bw * w),
            ]
        )
        for t, left, bh, bw in TTA_BOXES[:n]
    ]
    with torch.no_grad():
        logits = predictor.model(torch.stack(crops)).double() / predictor.temperature
    want = torch.softmax(logits, -1).mean(0)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    assert tta.predict(photos[0]).probs[0] == pytest.approx(float(want.max()), abs=1e-6)
    with pytest.raises(GeovitError, match="--tta 99 must be between 1 and"):
        tta_transform(size, mean, std, 99)


def test_hybrid_point_is_the_top_cells_centroid_moved_by_the_models_offset(
    hybrid_checkpoint, tiny_checkpoint, photos
):
    predictor = geovit.load(hybrid_checkpoint, device="cpu", point="hybrid")
    preds = predictor.predict(photos)
    x = torch.stack([predictor.preprocess(p) for p in photos])
    with torch.no_grad():
        out = predictor.model.forward_outputs(x)
    top = out["logits"].argmax(-1).numpy()
    off = out["offset"].double().numpy()[np.arange(len(top)), top]
    lat, lon = predictor.cells.points_at(top, off)
    assert [p.indices[0] for p in preds] == list(top)
    np.testing.assert_allclose([p.best_lat for p in preds], lat, atol=1e-5)
    np.testing.assert_allclose([p.best_lon for p in preds], lon, atol=1e-5)
    moved = haversine_km(
        lat, lon, predictor.cells.centroid_lat[top], predictor.cells.centroid_lon[top]
    )
    assert np.all(moved > 0.1) and all(p.point == "hybrid" for p in preds)
    with pytest.raises(GeovitError, match="no offset output") as err:
        geovit.load(tiny_checkpoint, device="cpu", point="hybrid")  # linear head: refused at load
    assert "\n" not in str(err.value)


def test_evaluate_scores_distances_from_the_chosen_point(tiny_checkpoint, tiny_world, tmp_path):
    res = runner.invoke(
        app,
        ["evaluate", "-c", str(tiny_checkpoint), "-d", str(tiny_world), "--out", str(tmp_path),
         "--no-places", "--point", "weighted"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["point"] == "weighted" and metrics["tta"] == 1
    assert "probability-weighted mean" in (tmp_path / "metrics.md").read_text()
    # Reference: the weighted points of predict_proba's probabilities, distances by hand.
    predictor = geovit.load(tiny_checkpoint, device="cpu")
    test = pd.read_csv(tiny_world / "test.csv")
    paths = [str(tiny_world / "images" / "test" / f"{i}.jpg") for i in test["id"]]
    probs = predictor.predict_proba(torch.stack([predictor.preprocess(p) for p in paths])).numpy()
    lat, lon = Weighted(predictor.cells).locate({"probs": probs})
    d = haversine_km(test["latitude"], test["longitude"], lat, lon)
    assert metrics["distance"]["median_km"] == pytest.approx(np.median(d), rel=1e-6)
    assert metrics["distance"]["mean_km"] == pytest.approx(d.mean(), rel=1e-6)


def test_index_and_predict_retrieval_inside_the_top_cells(tiny_checkpoint, gallery_file, photos):
    gallery = Gallery.load(gallery_file)
    assert gallery.meta["n_unreadable"] == 1 and gallery.meta["index"] == "flat"
    predictor = geovit.load(tiny_checkpoint, device="cpu", point="retrieval", index=gallery_file)
    for pred in predictor.predict(photos):
        # the answer is a gallery image's point, and that image lies in one of the top 3 cells
        d = haversine_km(pred.best_lat, pred.best_lon, gallery.lat, gallery.lon)
        image = int(np.argmin(d))
        assert d[image] < 1e-6
        cell = int(np.searchsorted(gallery.indptr, image, side="right") - 1)
        assert cell in pred.indices[:3]
    res = runner.invoke(
        app,
        ["predict", "-c", str(tiny_checkpoint), str(photos[0]), "--point", "retrieval",
         "--index", str(gallery_file), "--format", "json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    best = json.loads(res.stdout)[0]["best_guess"]
    assert min(haversine_km(best["lat"], best["lon"], gallery.lat, gallery.lon)) < 1e-6


def test_index_refuses_another_checkpoint(hybrid_checkpoint, gallery_file, photos):
    res = runner.invoke(
        app,
        ["predict", "-c", str(hybrid_checkpoint), str(photos[0]), "--point", "retrieval",
         "--index", str(gallery_file)],
    )  # fmt: skip
    assert res.exit_code != 0
    assert "was built with another model" in res.output
    with pytest.raises(GeovitError, match="needs --index"):
        geovit.load(hybrid_checkpoint, device="cpu", point="retrieval")


def test_onnx_predictor_runs_hybrid_and_retrieval(hybrid_checkpoint, tiny_world, photos, tmp_path):
    from geovit.evaluation import index_split
    from geovit.export import export_onnx
    from geovit.onnxmodel import load_predictor

    torch_pred = geovit.load(hybrid_checkpoint, device="cpu", point="hybrid")
    onnx = export_onnx(hybrid_checkpoint, tmp_path / "model.onnx")
    onnx_pred = load_predictor(onnx, point="hybrid")
    for a, b in zip(torch_pred.predict(photos), onnx_pred.predict(photos), strict=True):
        assert a.indices[0] == b.indices[0]
        assert haversine_km(a.best_lat, a.best_lon, b.best_lat, b.best_lon) < 0.01
    # A gallery built with the torch checkpoint belongs to its export too (same weights).
    manifest = pd.read_csv(tiny_world / "train.csv").head(40)
    manifest = manifest.assign(
        image=[str(tiny_world / "images" / "train" / f"{i}.jpg") for i in manifest["id"]],
        split="train",
    )
    index_split(torch_pred, manifest).save(tmp_path / "g.faiss")
    retrieval = load_predictor(onnx, point="retrieval", index=tmp_path / "g.faiss")
    torch_ret = geovit.load(
        hybrid_checkpoint, device="cpu", point="retrieval", index=tmp_path / "g.faiss"
    )
    a, b = retrieval.predict(photos[0]), torch_ret.predict(photos[0])
    assert (a.best_lat, a.best_lon) == pytest.approx((b.best_lat, b.best_lon), abs=1e-9)


def test_server_answers_with_the_configured_point(tiny_checkpoint, photos):
    from fastapi.testclient import TestClient

    from geovit.serve import create_app

    predictor = geovit.load(tiny_checkpoint, device="cpu", point="weighted", tta=2)
    client = TestClient(create_app(predictor))
    health = client.get("/health").json()
    assert health["point"] == "weighted" and health["tta"] == 2
    with open(photos[0], "rb") as f:
        body = client.post("/predict", files={"image": ("a.jpg", f, "image/jpeg")}).json()
    want = predictor.predict(photos[0])
    assert body["best_guess"] == pytest.approx({"lat": want.best_lat, "lon": want.best_lon})
    top1 = geovit.load(tiny_checkpoint, device="cpu", tta=2).predict(photos[0])
    assert (want.best_lat, want.best_lon) != (top1.best_lat, top1.best_lon)


def test_evaluate_with_crops_scores_the_averaged_softmax(tiny_checkpoint, tiny_world):
    from geovit.data.manifest import load_manifest
    from geovit.evaluation import evaluate, split_rows

    predictor = geovit.load(tiny_checkpoint, device="cpu", tta=3)
    manifest, _ = load_manifest(tiny_world)
    metrics = evaluate(predictor, manifest, "test", places=False, batch_size=16)
    assert metrics["tta"] == 3 and metrics["point"] == "top1"
    rows = split_rows(manifest, "test")
    x = torch.stack([predictor.preprocess(p) for p in rows["image"]])  # (B,3 crops,3,S,S)
    probs = predictor.predict_proba(x).double().numpy()
    labels = predictor.cells.assign(rows["latitude"], rows["longitude"])
    inside = labels >= 0
    ce = -np.log(probs[inside, labels[inside]]).mean()
    assert metrics["cross_entropy"] == pytest.approx(ce, rel=1e-5)
    assert metrics["cell_accuracy"]["all_images"]["top1"] == pytest.approx(
        np.mean(probs.argmax(1) == labels)
    )
