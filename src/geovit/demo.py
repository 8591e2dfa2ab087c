"""The embedded default: every stage of the pipeline on a synthetic world, offline, on a CPU.

`run_demo` is what `make demo` runs. It chains the public functions of the other modules, the
same ones a user calls, so the demo exercises exactly what ships: synthesize -> manifest ->
cells -> three-stage training -> calibration -> evaluation -> explanations and maps -> report ->
model card and datasheet.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geovit.card import describe_dataset, write_cards
from geovit.cells import T1_DEFAULT, T2_DEFAULT, CellPartition
from geovit.checkpoint import load_checkpoint, set_temperature
from geovit.data.manifest import load_manifest
from geovit.data.synth import generate_world
from geovit.demo_settings import DemoSettings
from geovit.evaluation import calibrate, evaluate, majority_baseline, write_outputs
from geovit.explain import explain_image, render_explanation
from geovit.maps import probability_map
from geovit.model import model_config
from geovit.predictor import Predictor
from geovit.report import build_report
from geovit.training import TrainConfig, train

Track = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@contextmanager
def _no_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


# OSV-Mini-129k: 2,199 cells from ~129k images with the design's t1=100, t2=20.
DESIGN_IMAGES = 129_083
DESIGN_CLASSES = 2_199


def scaled_thresholds(n_train: int, target_classes: int) -> tuple[int, int]:
    """t1/t2 that give about `target_classes` classes from `n_train` images.

    On OSV-Mini-129k the design's t1 = 100 gave 2,199 classes, ~59 images each: the images per
    class scale with t1. A CPU demo cannot learn thousands of classes from a few thousand images
    in minutes, so t1 is scaled by the images per class wanted over the design's, and t2 keeps the
    design's t1:t2 = 5:1.
    """
    per_class = n_train / max(target_classes, 1)
    t1 = max(round(T1_DEFAULT * per_class * DESIGN_CLASSES / DESIGN_IMAGES), 10)
    return t1, max(t1 * T2_DEFAULT // T1_DEFAULT, 1)


@dataclass
class DemoResult:
    out: Path
    metrics: dict[str, Any]
    baselines: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)


def run_demo(
    out_dir: str | Path,
    settings: DemoSettings | None = None,
    *,
    say: Callable[[str], None] = print,
    track: Track | None = None,
) -> DemoResult:
    """Run the whole pipeline into `out_dir`; `say` receives one line per stage and `track`
    (description, total) opens a progress bar whose `advance(n)` the long stages call."""
    bar = track or _no_bar
    s = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    say(f"1/7 synthesizing a world of {s.n:,} street scenes (seed {s.seed})")
    with bar("drawing", s.n) as advance:
        world = generate_world(
            out / "world", n=s.n, seed=s.seed, image_size=s.world_size, progress=advance
        )
    manifest, report = load_manifest(world, seed=s.seed)
    for line in report.lines():
        say(f"    {line}")

    train_rows = manifest[manifest["split"] == "train"]
    t1, t2 = scaled_thresholds(len(train_rows), s.target_classes)
    cells = CellPartition.build(
        train_rows["latitude"].to_numpy(np.float64),
        train_rows["longitude"].to_numpy(np.float64),
        t1=t1,
        t2=t2,
        names=train_rows["city"].to_numpy(dtype=object) if "city" in train_rows else None,
    )
    files["cells"] = cells.save(out / "cells.parquet")
    summary = cells.summary()
    say(
        f"2/7 cells: t1={t1}, t2={t2} (the design's {T1_DEFAULT}/{T2_DEFAULT} scaled from "
        f"{DESIGN_IMAGES:,} to {len(train_rows):,} training images) -> {summary['classes']} "
        f"classes, {summary['points_dropped']} points in pruned cells"
    )

    say(
        f"3/7 training the {s.preset} preset at {s.image_size}px for {s.epochs} epochs: heads only "
        f"0-{s.freeze_epochs - 1}, everything {s.freeze_epochs}-{s.cnn_refreeze_epoch - 1}, "
        f"CNN frozen {s.cnn_refreeze_epoch}-{s.epochs - 1}"
    )
    lite = s.preset == "lite"  # the only preset with real weights offline
    mcfg = model_config(s.preset, len(cells), image_size=s.image_size, pretrained=lite)
    tcfg = TrainConfig(
        epochs=s.epochs,
        freeze_epochs=s.freeze_epochs,
        cnn_refreeze_epoch=s.cnn_refreeze_epoch,
        batch_size=s.batch_size,
        lr=s.lr,
        workers=s.workers,
        seed=s.seed,
        accelerator="cpu",
    )
    # a rerun trains afresh: Lightning would otherwise add best-v1.ckpt beside the old run's files
    shutil.rmtree(out / "run", ignore_errors=True)
    result, _ = train(manifest, cells, out / "run", mcfg, tcfg, progress=track is not None)
    ckpt_path = result.model_path
    files["checkpoint"] = ckpt_path

    say("4/7 calibrating the softmax temperature on the validation split")
    n_val, n_test = ((manifest["split"] == split).sum() for split in ("val", "test"))
    with bar("logits of val", n_val) as advance:
        fit = calibrate(Predictor.from_checkpoint(ckpt_path), manifest, "val", progress=advance)
    set_temperature(ckpt_path, fit.temperature)
    say(f"    temperature {fit.temperature:.3f}")

    say("5/7 evaluating on the test split")
    ckpt = load_checkpoint(ckpt_path)  # now with its temperature
    predictor = Predictor.from_loaded(ckpt)
    with bar("evaluating test", n_test) as advance:
        metrics = evaluate(predictor, manifest, "test", progress=advance)
    files.update(write_outputs(metrics, out / "eval", title="Demo evaluation (synthetic world)"))
    baselines = majority_baseline(manifest, cells)

    say(f"6/7 explaining {s.n_explain} test images (occlusion heatmaps, probability maps)")
    test_rows = manifest[manifest["split"] == "test"].head(s.n_explain)
    in_cell = cells.assign(test_rows["latitude"].to_numpy(), test_rows["longitude"].to_numpy()) >= 0
    for row, known in zip(test_rows.itertuples(), in_cell, strict=True):
        expl = explain_image(
            predictor,
            row.image,
            lat=row.latitude,
            lon=row.longitude,
            target="true" if known else "top",
            patch=s.occlusion_patch,
            stride=s.occlusion_stride,
        )
        render_explanation(expl, out / "explain" / f"{row.id}.png")
        guess = predictor.predict(row.image, top_k=5)
        probability_map(
            cells,
            guess.all_probs,
            lat=row.latitude,
            lon=row.longitude,
            title=f"test image {row.id}: best guess {guess.tokens[0]} {guess.names[0]}",
            path=out / "maps" / f"{row.id}.png",
        )

    say("7/7 writing the HTML report, model card and datasheet")
    with bar("report: scoring test", n_test) as advance:
        files["report"] = build_report(
            predictor,
            manifest,
            out / "report",
            metrics=metrics,
            progress=advance,
            patch=s.occlusion_patch,
            stride=s.occlusion_stride,
        )
    data = describe_dataset(world, "geovit synthetic world (OSV-Mini-129k stand-in)")
    files["card"], files["datasheet"] = write_cards(
        out, ckpt, metrics, manifest, report.lines(), data
    )
    return DemoResult(out, metrics, baselines, files)
