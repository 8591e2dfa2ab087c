"""The HTML report: example selection rules, per-cell accuracy, and the page end to end."""

from __future__ import annotations

import base64
import json
import re
import shutil

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import geovit.data.pixels
import geovit.report
from geovit.cli import app
from geovit.data.manifest import load_manifest
from geovit.geo import haversine_km
from geovit.predictor import Predictor
from geovit.report import KINDS, cell_accuracy, example_stats, pick_examples

matplotlib.use("Agg")


def _stats(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    base = {"row": np.arange(n), "label": np.zeros(n, int), "top1": np.zeros(n, int)}
    return pd.DataFrame({**base, **cols})


def test_pick_examples_follows_the_definitions():
    # 8 images. Quartiles by hand (linear interpolation at position 0.75 * 7 = 5.25 of the
    # sorted values): p1 0.6 + 0.25 * 0.2 = 0.65, entropy 3 + 0.25 * 0.5 = 3.125,
    # mass 0.45 + 0.25 * 0.25 = 0.5125; median p1 = (0.3 + 0.55) / 2 = 0.425.
    s = _stats(
        p1=[0.9, 0.8, 0.6, 0.55, 0.3, 0.1, 0.05, 0.2],
        correct=[True, False, True, False, False, False, False, True],
        entropy=[0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 3.5],
        mass_near_truth=[0.9, 0.0, 0.3, 0.45, 0.7, 0.05, 0.0, 0.2],
    )
    q = s[["p1", "entropy", "mass_near_truth"]].quantile(0.75)
    assert q.to_list() == pytest.approx([0.65, 3.125, 0.5125])
    picks = pick_examples(s, per_kind=2)
    assert list(picks) == list(KINDS)
    assert picks["confident_right"] == [0]  # correct with p1 >= 0.65 (row 2 has 0.6)
    assert picks["confident_wrong"] == [1]  # wrong with p1 >= 0.65
    assert picks["tight_cluster"] == [4]  # wrong, mass >= 0.5125 (row 3 has 0.45)
    assert picks["diffuse"] == [6, 7]  # entropy >= 3.125 and p1 <= 0.425, highest entropy first
    one = pick_examples(s, per_kind=1)
    assert one["diffuse"] == [6]
    # No image twice: give row 4 (tight cluster) the highest entropy; diffuse must skip it.
    s2 = s.assign(entropy=[0.5, 1.0, 1.5, 2.0, 5.0, 3.0, 4.0, 3.5])
    picks2 = pick_examples(s2, per_kind=3)
    assert picks2["tight_cluster"] == [4] and picks2["diffuse"] == [6]


def test_cell_accuracy_matches_groupby():
    rng = np.random.default_rng(0)
    s = _stats(
        p1=rng.random(200),
        correct=rng.random(200) < 0.3,
        entropy=rng.random(200),
        mass_near_truth=rng.random(200),
    ).assign(label=rng.integers(-1, 12, 200))
    acc = cell_accuracy(s, 15)
    ref = s[s["label"] >= 0].groupby("label")["correct"].mean()
    for k in range(15):
        if k in ref.index:
            assert acc[k] == pytest.approx(ref[k])
        else:
            assert np.isnan(acc[k])


def test_example_stats_match_predict_proba(tiny_checkpoint, tiny_world):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    manifest, _ = load_manifest(tiny_world)
    rows = manifest[manifest["split"] == "test"].head(6).reset_index(drop=True)
    stats = example_stats(predictor, rows, batch_size=4)
    x = torch.stack([predictor.preprocess(p) for p in rows["image"]])
    p = predictor.predict_proba(x).double().numpy()
    cells = predictor.cells
    np.testing.assert_array_equal(stats["row"], np.arange(6))
    np.testing.assert_array_equal(stats["top1"], p.argmax(1))
    np.testing.assert_allclose(stats["p1"], p.max(1), rtol=1e-5)
    np.testing.assert_allclose(stats["entropy"], -(p * np.log(p)).sum(1), rtol=1e-5)
    labels = cells.assign(rows["latitude"].to_numpy(), rows["longitude"].to_numpy())
    np.testing.assert_array_equal(stats["correct"], p.argmax(1) == labels)
    for i, r in rows.iterrows():
        d = haversine_km(r["latitude"], r["longitude"], cells.centroid_lat, cells.centroid_lon)
        assert stats["mass_near_truth"][i] == pytest.approx(p[i][d < 200].sum(), abs=1e-6)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([^']+)'", page)]


def test_pick_examples_takes_each_sequence_once():
    # Rows 0 and 1 are frames of one drive, both confidently right: the second pick is row 2.
    s = _stats(
        p1=[0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1],
        correct=[True, True, True, False, False, False, False, False],
        entropy=np.linspace(0.5, 4, 8),
        mass_near_truth=np.zeros(8),
        sequence=[7, 7, 3, 1, 2, 4, 5, 6],
    )
    picks = pick_examples(s, per_kind=2)
    assert picks["confident_right"] == [0, 2]
    chosen = [i for rows in picks.values() for i in rows]
    assert len(set(s.loc[chosen, "sequence"])) == len(chosen)


def test_report_end_to_end(tiny_checkpoint, tiny_world, tmp_path, offline, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "rep"
    # The checkpoint in a run folder with Lightning's CSV log: the report draws its curves.
    run = tmp_path / "run"
    (run / "logs" / "version_0").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "model.pt")
    pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1],
            "step": [5, 5, 11, 11],
            "train/loss_epoch": [3.0, np.nan, 2.5, np.nan],
            "val/loss": [np.nan, 3.2, np.nan, 2.9],
            "val/acc1": [np.nan, 0.1, np.nan, 0.2],
        }
    ).to_csv(run / "logs" / "version_0" / "metrics.csv", index=False)
    args = ["report", "-c", str(run / "model.pt"), "-d", str(tiny_world), "-o", str(out),
            "--examples", "1"]  # fmt: skip
    res = runner.invoke(app, [*args, "--fast"])
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    for heading in ("Metrics", "Reliability diagram", "Accuracy per cell", "Examples"):
        assert f"<h2>{heading}</h2>" in page
    for kind in KINDS:
        assert f"<h3>{kind.replace('_', ' ')}</h3>" in page
    n_gallery = page.count("<figure>")
    assert 1 <= n_gallery <= len(KINDS)
    pngs = _images(page)
    assert len(pngs) == 3 + 2 * n_gallery  # reliability, accuracy map, training curves
    assert "<h2>Training curves</h2>" in page
    assert "id='synthetic-warning'" in page  # the tiny world is synthetic
    # Baselines, recomputed here with pandas: the most common training cell's share of test.
    manifest, _ = load_manifest(tiny_world)
    cells = Predictor.from_checkpoint(tiny_checkpoint).cells
    common = pd.Series(cells.assign(*(manifest.loc[manifest.split == "train", c].to_numpy()
                                     for c in ("latitude", "longitude")))).mode()[0]  # fmt: skip
    test = manifest[manifest.split == "test"]
    share = np.mean(cells.assign(test.latitude.to_numpy(), test.longitude.to_numpy()) == common)
    assert f"<td>always the most common training cell</td><td>{100 * share:.2f}%</td>" in page
    assert f"<td>{100 / len(cells):.2f}%</td>" in page
    assert all(p.startswith(b"\x89PNG") and len(p) > 10_000 for p in pngs)
    assert not re.search(r"<(script|img|link)[^>]+(src|href)=['\"]?https?:", page)
    assert f"{100 * metrics['cell_accuracy']['all_images']['top1']:.2f}%" in page

    # Reusing metrics.json skips the evaluation pass and reports the same numbers.
    def no_eval(*a, **k):
        raise AssertionError("evaluate ran although --metrics was given")

    monkeypatch.setattr(geovit.report, "run_evaluation", no_eval)
    out2 = tmp_path / "rep2"
    res = runner.invoke(
        app,
        [
            "report", "-c", str(tiny_checkpoint), "-d", str(tiny_world), "-o", str(out2),
            "--examples", "0", "--metrics", str(out / "metrics.json"),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    page2 = (out2 / "report.html").read_text()
    assert page2.count("<figure>") == 0 and not (out2 / "metrics.json").exists()
    assert f"{metrics['distance']['median_km']:.1f}" in page2


def test_report_bad_inputs(tiny_checkpoint, tiny_world, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["report", "-c", str(tiny_checkpoint), "-d", str(tiny_world), "-o", str(tmp_path),
         "--fill", "9,9"],
    )  # fmt: skip
    assert res.exit_code == 2 and "--fill" in res.output
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    res = runner.invoke(
        app,
        [
            "report",
            "-c",
            str(tiny_checkpoint),
            "-d",
            str(tiny_world),
            "-o",
            str(tmp_path),
            "--metrics",
            str(bad),
        ],
    )
    assert res.exit_code == 2 and "--metrics" in res.output


def test_report_streams_the_split_once_and_decodes_each_gallery_photo_once_more(
    tiny_checkpoint, tiny_world, tmp_path, offline, monkeypatch
):
    import geovit.data.images
    import geovit.evaluation
    from geovit.evaluation import evaluate, evaluate_with_images

    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    manifest, _ = load_manifest(tiny_world)
    # The one pass gives evaluate's metrics and example_stats's numbers, unchanged.
    metrics, stats = evaluate_with_images(predictor, manifest, "test", places=False)
    assert metrics == evaluate(predictor, manifest, "test", places=False)
    test = manifest[manifest.split == "test"].reset_index(drop=True)
    pd.testing.assert_frame_equal(stats, example_stats(predictor, test))

    passes, reads = [], []
    stream, read = geovit.evaluation.stream_logits, geovit.data.images.read_image_bytes
    stream_outputs = geovit.evaluation.stream_outputs  # evaluation's pass (any --point)

    def counted_stream(*a, **k):
        passes.append(1)
        return stream(*a, **k)

    def counted_outputs(*a, **k):
        passes.append(1)
        return stream_outputs(*a, **k)

    def counted_read(ref):
        reads.append(str(ref))
        return read(ref)

    monkeypatch.setattr(geovit.evaluation, "stream_logits", counted_stream)
    monkeypatch.setattr(geovit.report, "stream_logits", counted_stream)
    monkeypatch.setattr(geovit.evaluation, "stream_outputs", counted_outputs)
    monkeypatch.setattr(geovit.data.images, "read_image_bytes", counted_read)  # the dataset
    monkeypatch.setattr(geovit.data.pixels, "read_image_bytes", counted_read)  # load_image
    geovit.report.build_report(
        predictor, manifest, tmp_path / "rep", per_kind=1, patch=16, stride=16
    )
    page = (tmp_path / "rep" / "report.html").read_text()
    n_gallery = page.count("<figure>")
    assert n_gallery >= 1
    assert len(passes) == 1
    counts = pd.Series(reads).value_counts()
    assert len(counts) == len(test)  # every image read in the pass ...
    assert (counts == 2).sum() == n_gallery and counts.max() == 2  # ... gallery photos once more
