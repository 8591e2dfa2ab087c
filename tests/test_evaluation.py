"""evaluate / calibrate end to end on the tiny world with a random small model (plumbing).

Metric formulas are tested on hand-made arrays in test_metrics.py; here the question is whether
the streamed evaluation sees every image once, in the right order, with the right labels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import geovit
from geovit import calibration, evaluation
from geovit.checkpoint import load_checkpoint
from geovit.cli import app
from geovit.data.images import build_transform, decode_image
from geovit.data.manifest import load_manifest
from geovit.errors import GeovitError
from geovit.metrics import GeoMetrics, reverse_geocode
from geovit.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return geovit.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def manifest(tiny_world):
    return load_manifest(tiny_world)[0]


@pytest.fixture(scope="module")
def metrics(predictor, manifest):
    return evaluation.evaluate(predictor, manifest, "test", batch_size=16, ks=(1, 3, 5))


def test_evaluate_equals_one_shot_reference(predictor, manifest, metrics):
    rows = manifest[manifest["split"] == "test"].reset_index(drop=True)
    transform = build_transform(predictor.image_size, predictor.mean, predictor.std, train=False)
    x = torch.stack([transform(decode_image(Path(p).read_bytes())) for p in rows["image"]])
    with torch.no_grad():
        logits = predictor.model(x).numpy()
    lat, lon = rows["latitude"].to_numpy(), rows["longitude"].to_numpy()
    cells = predictor.cells
    ref = GeoMetrics(cells.centroid_lat, cells.centroid_lon, ks=(1, 3, 5))
    truth = {
        c.removeprefix("unique_"): rows[c].to_numpy(object) for c in rows if c.startswith("unique_")
    }
    ref.update(logits, cells.assign(lat, lon), lat, lon, {**reverse_geocode(lat, lon), **truth})
    expected = ref.compute()

    assert metrics["n_split_images"] == len(rows) == metrics["n_images"]
    assert metrics["n_unreadable"] == 0
    assert metrics["n_outside_cells"] == int((cells.assign(lat, lon) < 0).sum())
    assert metrics["cell_accuracy"] == expected["cell_accuracy"]
    assert metrics["place_accuracy"] == expected["place_accuracy"]
    counts = [[b["count"] for b in m["calibration"]["bins"]] for m in (metrics, expected)]
    assert counts[0] == counts[1]
    for key in ("mean_km", "median_km"):
        assert metrics["distance"][key] == pytest.approx(expected["distance"][key], rel=1e-5)
    assert metrics["cross_entropy"] == pytest.approx(expected["cross_entropy"], rel=1e-4)
    assert metrics["calibration"]["ece"] == pytest.approx(expected["calibration"]["ece"], abs=1e-5)


def test_two_runs_are_identical(predictor, manifest, metrics):
    again = evaluation.evaluate(predictor, manifest, "test", batch_size=16, ks=(1, 3, 5))
    assert json.dumps(again, sort_keys=True) == json.dumps(metrics, sort_keys=True)


def test_unreadable_images_are_counted(predictor, manifest, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really")
    damaged = manifest.copy()
    test_idx = damaged.index[damaged["split"] == "test"]
    damaged.loc[test_idx[1], "image"] = str(broken)
    damaged.loc[test_idx[4], "image"] = str(tmp_path / "gone.jpg")
    out = evaluation.evaluate(predictor, damaged, "test", batch_size=4, places=False)
    assert out["n_unreadable"] == 2
    assert out["n_images"] == len(test_idx) - 2
    assert "place_accuracy" not in out


def test_place_labels_are_geocoded_when_the_manifest_lacks_them(predictor, manifest):
    bare = manifest.drop(columns=[c for c in manifest.columns if c.startswith("unique_")])
    out = evaluation.evaluate(predictor, bare, "test", batch_size=32)
    rows = bare[bare["split"] == "test"]
    lat, lon = rows["latitude"].to_numpy(), rows["longitude"].to_numpy()
    probs = predictor.predict_proba(
        torch.stack([predictor.preprocess(p) for p in rows["image"]])
    ).numpy()
    top = probs.argmax(axis=1)
    pred = reverse_geocode(predictor.cells.centroid_lat[top], predictor.cells.centroid_lon[top])
    true = reverse_geocode(lat, lon)
    for level, got in out["place_accuracy"].items():
        assert got["n_labelled"] == len(rows)
        assert got["accuracy"] == pytest.approx(np.mean(pred[level] == true[level]))


def test_unknown_split_is_a_clear_error(predictor, manifest):
    with pytest.raises(GeovitError, match="no 'holdout' images"):
        evaluation.evaluate(predictor, manifest, "holdout")


def test_writers(metrics, tmp_path):
    paths = evaluation.write_outputs(metrics, tmp_path / "out", title="tiny")
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(metrics))
    md = paths["markdown"].read_text()
    assert "6371 km" in md and "d < X (strict)" in md
    top1 = metrics["cell_accuracy"]["all_images"]["top1"]
    assert f"{100 * top1:.2f}%" in md
    with Image.open(paths["reliability"]) as png:
        assert png.format == "PNG" and png.size[0] > 300
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "metrics.json",
        "metrics.md",
        "reliability.png",
    ]


def test_calibrate_fits_on_raw_logits(predictor, manifest):
    fit = evaluation.calibrate(predictor, manifest, "val", batch_size=8, max_images=12)
    assert fit.n_images <= 12
    assert fit.nll_after <= fit.nll_before + 1e-12
    predictor.temperature = 4.0  # an existing temperature must not leak into the new fit
    try:
        again = evaluation.calibrate(predictor, manifest, "val", batch_size=8, max_images=12)
    finally:
        predictor.temperature = 1.0
    assert again.temperature == pytest.approx(fit.temperature, rel=1e-6)


def test_cli_evaluate_and_calibrate(tiny_checkpoint, tiny_world, tmp_path):
    model = Path(shutil.copy(tiny_checkpoint, tmp_path / "model.pt"))
    runner = CliRunner()
    before = model.read_bytes()
    args = ["calibrate", "-c", str(model), "-d", str(tiny_world), "--max-images", "10"]
    res = runner.invoke(app, [*args, "--split", "train", "--check-split", "val"])
    assert res.exit_code == 0, res.output
    assert model.read_bytes() == before and "unchanged" in res.stdout  # kept unless asked
    # Before/after on the fitted split and on val, recomputed here from the logits.
    manifest = load_manifest(tiny_world)[0]
    predictor = Predictor.from_checkpoint(model)
    fit = evaluation.calibrate(predictor, manifest, "train", batch_size=8, max_images=10)
    val = calibration.score_temperature(
        *evaluation.split_logits(predictor, manifest, "val", max_images=10), fit.temperature
    )
    assert val.n_images > 0
    for name, f in (("train (fit)", fit), ("val ", val)):
        row = next(line for line in res.stdout.splitlines() if name in line)
        for v in (f.ece_before, f.ece_after, f.nll_before, f.nll_after):
            assert f"{v:.4f}" in row
    copy = tmp_path / "calibrated.pt"
    res = runner.invoke(app, [*args, "--out", str(copy)])
    assert res.exit_code == 0, res.output
    assert model.read_bytes() == before and load_checkpoint(copy).temperature != 1.0
    res = runner.invoke(app, [*args, "--in-place"])
    assert res.exit_code == 0, res.output
    stored = load_checkpoint(model).temperature
    assert stored == load_checkpoint(copy).temperature and f"{stored:.4f}" in res.stdout

    out = tmp_path / "eval"
    res = runner.invoke(
        app,
        [
            "evaluate",
            "-c",
            str(model),
            "-d",
            str(tiny_world),
            "--accuracy-at",
            "1,2",
            "--out",
            str(out),
            "--no-places",
        ],
    )
    assert res.exit_code == 0, res.output
    written = json.loads((out / "metrics.json").read_text())
    assert written["temperature"] == pytest.approx(stored)
    assert set(written["cell_accuracy"]["all_images"]) == {"top1", "top2"}
    assert "Cell accuracy" in res.stdout and "6371" in res.stdout

    res = runner.invoke(
        app,
        ["evaluate", "-c", str(model), "-d", str(tiny_world), "--accuracy-at", "0", "-o", str(out)],
    )
    assert res.exit_code == 2 and "--accuracy-at" in res.stderr
    assert load_checkpoint(model).temperature == stored  # a failed command changes nothing


@pytest.mark.parametrize("command", ["evaluate", "calibrate", "map"])
def test_unwritable_output_fails_before_the_work(
    command, tiny_checkpoint, tiny_world, tmp_path, monkeypatch
):
    """A folder under a regular file cannot be created (even by root): the command must say so
    at once, not after scoring every image (it used to die there with a raw traceback)."""

    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the output folder was checked")

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(no_work))
    (tmp_path / "file.txt").write_text("x")
    bad = tmp_path / "file.txt" / "sub"
    photo = next((tiny_world / "images" / "test").glob("*.jpg"))
    args = {
        "evaluate": ["evaluate", "-d", str(tiny_world), "-o", str(bad)],
        "calibrate": ["calibrate", "-d", str(tiny_world), "--out", str(bad / "cal.pt")],
        "map": ["map", str(photo), "-o", str(bad / "map.png"), "--lat", "1", "--lon", "2"],
    }[command]
    res = CliRunner().invoke(app, [*args, "-c", str(tiny_checkpoint)])
    assert res.exit_code == 2, res.output
    assert "cannot write to folder" in res.stderr and str(bad) in res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1


def test_reliability_legend_names_over_and_under_confidence():
    """Two bins by hand: 0.2-0.4 under-confident (confidence 0.3 < accuracy 0.5), 0.8-1.0
    over-confident (0.9 > 0.4); each gap is shaded in its own colour and named in the legend."""
    from matplotlib.colors import to_hex

    from geovit.evaluation import OVER_COLOUR, UNDER_COLOUR, reliability_figure

    bins = [
        {"lower": lo, "upper": lo + 0.2, "accuracy": None, "confidence": None, "count": 0}
        for lo in (0.0, 0.2, 0.4, 0.6, 0.8)
    ]
    bins[1].update(accuracy=0.5, confidence=0.3, count=10)
    bins[4].update(accuracy=0.4, confidence=0.9, count=5)
    m = {"split": "val", "temperature": 1.0, "calibration": {"ece": 0.25, "bins": bins}}
    fig = reliability_figure(m)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "over-confident: confidence > accuracy" in labels
    assert "under-confident: confidence < accuracy" in labels
    shaded = {
        to_hex(p.get_facecolor(), keep_alpha=False): (p.get_x(), p.get_y(), p.get_height())
        for p in ax.patches
        if p.get_height() != 0 and to_hex(p.get_facecolor()) in (OVER_COLOUR, UNDER_COLOUR)
    }
    assert shaded[OVER_COLOUR] == pytest.approx((0.8, 0.4, 0.5))  # from accuracy up to 0.9
    assert shaded[UNDER_COLOUR] == pytest.approx((0.2, 0.5, -0.2))  # from accuracy down to 0.3
