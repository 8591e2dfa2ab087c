"""The demo pipeline end to end on a tiny world, and the documents it writes (card, datasheet)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from geovit.cells import CellPartition
from geovit.demo import run_demo, scaled_thresholds
from geovit.demo_settings import DemoSettings, stage_boundaries
from geovit.evaluation import majority_baseline
from geovit.geo import haversine_km

TINY = DemoSettings(
    n=300,
    world_size=(90, 60),
    image_size=32,
    target_classes=8,
    epochs=3,
    freeze_epochs=1,
    cnn_refreeze_epoch=2,
    batch_size=32,
    workers=0,
    n_explain=1,
    occlusion_patch=8,
    occlusion_stride=4,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    lines: list[str] = []
    result = run_demo(tmp_path_factory.mktemp("demo"), TINY, say=lines.append)
    return result, lines


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_demo_writes_every_artefact(demo) -> None:
    result, lines = demo
    out = result.out
    assert [line[:3] for line in lines if line[1:2] == "/"] == [f"{i}/7" for i in range(1, 8)]
    for key in ("cells", "checkpoint", "json", "markdown", "reliability", "report", "card"):
        assert result.files[key].is_file() and result.files[key].stat().st_size > 0, key
    assert len(list((out / "explain").glob("*.png"))) == TINY.n_explain
    assert len(list((out / "maps").glob("*.png"))) == TINY.n_explain
    html = result.files["report"].read_text()
    assert "<img" in html and "http://" not in html.split("<body")[1].split("<img")[0]


def test_model_card_agrees_with_metrics_json(demo) -> None:
    result, _ = demo
    metrics = json.loads(result.files["json"].read_text())
    card = result.files["card"].read_text()
    meta = _front_matter(card)
    values = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    acc = metrics["cell_accuracy"]["all_images"]
    assert values["Cell accuracy top1 (all test images)"] == pytest.approx(acc["top1"], abs=1e-6)
    assert values["Cell accuracy top5 (all test images)"] == pytest.approx(acc["top5"], abs=1e-6)
    assert values["Median great-circle error (km)"] == pytest.approx(
        metrics["distance"]["median_km"], abs=1e-6
    )
    assert values["Within 200 km"] == pytest.approx(
        metrics["distance"]["accuracy_within_km"]["200"], abs=1e-6
    )
    assert "synthetic" in card.lower() and "synthetic-data" in meta["tags"]
    for section in (
        "## Architecture",
        "## Training",
        "## Evaluation",
        "## Limitations",
        "## Out-of-scope uses",
        "## Ethical considerations",
    ):
        assert section in card
    assert f"{100 * acc['top1']:.2f}%" in card
    # Usage snippet, the data-limit settings, and no free-text `datasets:` for a synthetic world.
    assert "## How to use" in card and 'geovit.load("model.pt")' in card
    assert "| limit_train_batches |" in card


def test_limited_run_note_says_how_much_data_an_epoch_saw() -> None:
    from geovit.card import limited_run_note

    assert limited_run_note({"limit_train_batches": 1.0, "limit_val_batches": 1.0}) == ""
    note = limited_run_note({"limit_train_batches": 0.25, "limit_val_batches": 3})
    assert "25% of the training batches" in note and "only 3 validation batches" in note


def test_datasheet_counts_match_the_data(demo) -> None:
    result, _ = demo
    sheet = result.files["datasheet"].read_text()
    world = result.out / "world"
    test = pd.read_csv(world / "test.csv", dtype={"id": str})
    train = pd.read_csv(world / "train.csv", dtype={"id": str})
    cells = CellPartition.load(result.files["cells"])
    assert "synthetic" in sheet.lower()
    # the split table: train + val rows come from train.csv, test rows from test.csv
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
        for line in sheet.splitlines()
        if line.startswith("| train") or line.startswith("| val") or line.startswith("| test")
    }
    n_train, n_val = (int(rows[s][0].replace(",", "")) for s in ("train", "val"))
    assert n_train + n_val == len(train) and int(rows["test"][0].replace(",", "")) == len(test)
    outside_test = (
        cells.assign(test["latitude"].to_numpy(), test["longitude"].to_numpy()) < 0
    ).sum()
    assert int(rows["test"][1].replace(",", "")) == outside_test
    assert f"{len(cells):,} cells" in sheet
    for state in test["region"].unique():
        assert f"| {state} |" in sheet


def test_majority_baseline_by_hand() -> None:
    lat = np.array([40.0, 40.001, 40.002, 35.0, 35.001, 30.0])
    lon = np.array([-100.0, -100.0, -100.0, -110.0, -110.0, -95.0])
    cells = CellPartition.build(lat, lon, t1=2, t2=1)
    common = int(np.argmax(cells.counts))
    test = pd.DataFrame({"latitude": lat, "longitude": lon, "split": "test"})
    b = majority_baseline(test, cells)
    labels = cells.assign(lat, lon)
    assert b["chance_top1"] == 1 / len(cells)
    assert b["majority_top1"] == pytest.approx(np.mean(labels == common))
    d = [
        haversine_km(a, o, cells.centroid_lat[common], cells.centroid_lon[common])
        for a, o in zip(lat, lon, strict=True)
    ]
    assert b["majority_within_200km"] == pytest.approx(np.mean(np.array(d) < 200))


def test_scaled_thresholds_keep_the_design_ratio() -> None:
    assert scaled_thresholds(129_083, 2_199) == (100, 20)  # the design's own dataset
    # 100 images per class wanted vs the design's 129,083 / 2,199 = 58.7: t1 = 170
    assert scaled_thresholds(4_000, 40) == (170, 34)
    assert scaled_thresholds(100, 1000) == (10, 2)  # floor


def test_cli_demo_rejects_bad_sizes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from geovit.cli import app

    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--n", "-5"])
    assert res.exit_code == 2
    assert "error" in res.output.lower()


def test_stage_boundaries_follow_the_design() -> None:
    assert stage_boundaries(23) == (3, 20)  # the design: 0-2 heads only, 20-22 CNN frozen
    default = DemoSettings()
    assert stage_boundaries(default.epochs) == (default.freeze_epochs, default.cnn_refreeze_epoch)
    assert stage_boundaries(1) == (0, 1)


def test_demo_rerun_is_identical_and_leaves_no_stale_checkpoints(demo) -> None:
    result, _ = demo
    again = run_demo(result.out, TINY, say=lambda line: None)
    assert again.metrics == result.metrics  # deterministic on CPU for a seed
    assert sorted(p.name for p in (result.out / "run").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]


def test_card_cli_rewrites_the_demo_documents(demo, tmp_path) -> None:
    from typer.testing import CliRunner

    from geovit.cli import app

    result, _ = demo
    out = result.out
    args = ["card", "-c", str(result.files["checkpoint"]), "-d", str(out / "world"), "-o",
            str(tmp_path), "--metrics", str(result.files["json"]), "--name", "world"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads(result.files["json"].read_text())
    meta = _front_matter((tmp_path / "MODEL_CARD.md").read_text())
    values = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    top1 = metrics["cell_accuracy"]["all_images"]["top1"]
    assert values["Cell accuracy top1 (all test images)"] == pytest.approx(top1, abs=1e-6)
    assert "synthetic" in (tmp_path / "DATASHEET.md").read_text().lower()


def test_describe_dataset_tells_synthetic_worlds_apart(demo, tmp_path) -> None:
    from geovit.card import describe_dataset

    result, _ = demo
    world = describe_dataset(result.out / "world", "w")
    assert world.synthetic and world.generator["n"] == TINY.n
    other = describe_dataset(tmp_path, "mine")
    assert not other.synthetic and other.generator is None and other.source == str(tmp_path)
