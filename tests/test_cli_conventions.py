"""CLI and API conventions: --version, a light start, the Python API (predict -> DataFrame,
evaluate -> metrics dict)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import click
import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

import geovit
from geovit.cells import CellPartition
from geovit.cli import app
from geovit.cli import train as cli_train
from geovit.cli._common import plain
from geovit.data.manifest import load_manifest
from geovit.dataset_options import DatasetOptions
from geovit.demo_settings import DemoSettings
from geovit.errors import GeovitError
from geovit.predictor import Predictor
from geovit.train_config import TrainConfig

HEAVY = ("pandas", "torch", "timm", "pyarrow", "matplotlib", "lightning")


def test_version_flag():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == geovit.__version__


def _imported_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(__import__('json').dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_no_heavy_library():
    """`geovit --help` builds the whole command tree; it must not import pandas/torch (the
    start-up time they cost is measured in bench/, not here)."""
    mods = _imported_after(
        "from geovit.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert not [m for m in HEAVY if m in mods]


def test_python_api_predict_returns_a_dataframe(tiny_checkpoint, tiny_world):
    folder = tiny_world / "images" / "test"
    df = geovit.predict(tiny_checkpoint, folder, top_k=3)
    photos = sorted(str(p) for p in folder.glob("*.jpg"))
    assert sorted(df["image"].unique()) == photos and len(df) == 3 * len(photos)
    ref = Predictor.from_checkpoint(tiny_checkpoint).predict(photos[0], top_k=3)
    one = df[df["image"] == photos[0]].sort_values("rank")
    assert one["token"].tolist() == ref.tokens
    np.testing.assert_allclose(one["probability"], ref.probs, rtol=1e-5)
    with pytest.raises(GeovitError, match="no such file"):
        geovit.predict(tiny_checkpoint, tiny_world / "missing.jpg")


def test_python_api_evaluate_is_the_cli_metrics(tiny_checkpoint, tiny_world, tmp_path):
    m = geovit.evaluate(tiny_checkpoint, tiny_world, "test", batch_size=32)
    res = CliRunner().invoke(
        app, ["evaluate", "-c", str(tiny_checkpoint), "-d", str(tiny_world), "-o", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    written = json.loads((tmp_path / "metrics.json").read_text())
    for view in ("all_images", "in_cell_images"):
        assert m["cell_accuracy"][view] == pytest.approx(written["cell_accuracy"][view])
    assert m["distance"]["median_km"] == pytest.approx(written["distance"]["median_km"])


# ---- one home per default: train flags are TrainConfig's fields, dataset flags one object ----

COMMANDS = typer.main.get_command(app)


def _command(path: str) -> click.Command:
    cmd = COMMANDS
    for name in path.split():
        cmd = cmd.commands[name]
    return cmd


def _params(path: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in _command(path).params}


def _all_commands(group: click.Command = COMMANDS, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            found |= _all_commands(cmd, f"{prefix}{name} ")
        else:
            found[f"{prefix}{name}"] = cmd
    return found


@pytest.mark.parametrize("field", dataclasses.fields(TrainConfig), ids=lambda f: f.name)
def test_every_trainconfig_field_is_a_train_flag_with_its_default(field):
    """Parsing `geovit train` with no hyper-parameter flag gives TrainConfig()'s value of each
    field (so a new field is covered without a new test), under --field-name, with a help line."""
    param = _params("train")[field.name]
    assert f"--{field.name.replace('_', '-')}" in param.opts
    assert param.help and param.help != f"TrainConfig.{field.name}"  # a TRAIN_HELP line
    ctx = _command("train").make_context("train", ["--data", "d", "--out", "o"])
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    parsed = cli_train._train_config(**{n: ctx.params[n] for n in names})
    assert getattr(parsed, field.name) == getattr(TrainConfig(), field.name)
    assert type(getattr(parsed, field.name)) is type(getattr(TrainConfig(), field.name))


def test_train_flags_reach_trainconfig_as_plain_values():
    args = ["--data", "d", "--out", "o", "--plateau-patience", "5", "--plateau-factor", "0.25",
            "--scheduler", "cosine", "--precision", "bf16-mixed", "--grad-clip", "0",
            "--devices", "auto", "--limit-train-batches", "3", "--monitor", "val/acc1"]  # fmt: skip
    ctx = _command("train").make_context("train", args)
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    cfg = cli_train._train_config(**{n: ctx.params[n] for n in names})
    assert cfg == dataclasses.replace(
        TrainConfig(), plateau_patience=5, plateau_factor=0.25, scheduler="cosine",
        precision="bf16-mixed", grad_clip=None, devices="auto", limit_train_batches=3,
        monitor="val/acc1",
    )  # fmt: skip
    assert type(cfg.scheduler) is str and type(cfg.monitor) is str  # checkpoints hold no Enum


DATASET_COMMANDS = ["cells build", "evaluate", "calibrate", "report", "card", "shards", "train"]


@pytest.mark.parametrize("path", DATASET_COMMANDS)
def test_dataset_commands_share_the_dataset_options_and_their_defaults(path):
    params = _params(path)
    defaults = {f.name: plain(params[f.name].default) for f in dataclasses.fields(DatasetOptions)}
    assert DatasetOptions(**defaults) == DatasetOptions()
    assert "--layout" in params["layout"].opts and "fmt" not in params


def test_dataset_options_reach_the_manifest_reader(tmp_path):
    """`cells build` with every split and column flag partitions exactly the train rows that
    load_manifest gives for the same options under its own names."""
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(30, 45, 400), rng.uniform(-120, -100, 400)
    table = tmp_path / "pts.csv"
    pd.DataFrame({"y": lat, "x": lon}).to_csv(table, index=False, sep=";")
    out = tmp_path / "cells.parquet"
    args = ["cells", "build", str(table), "--t1", "30", "--t2", "2", "--out", str(out),
            "--layout", "table", "--lat-col", "y", "--lon-col", "x", "--sep", ";",
            "--val-split", "random", "--val-fraction", "0.3", "--split-seed", "7"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    manifest, _ = load_manifest(table, fmt="table", lat_col="y", lon_col="x", sep=";",
                                val_split="random", val_fraction=0.3, seed=7,
                                need_images=False)  # fmt: skip
    train = manifest[manifest["split"] == "train"]
    want = CellPartition.build(train["latitude"].to_numpy(), train["longitude"].to_numpy(),
                               t1=30, t2=2)  # fmt: skip
    got = CellPartition.load(out)
    assert got.n_points == want.n_points and list(got.tokens) == list(want.tokens)


def test_command_files_are_named_after_their_commands():
    """Each command lives in cli/<command>.py (sub-commands in their group's file); `version`
    lives beside --version in the app itself."""
    for path, cmd in _all_commands().items():
        if path == "version":
            continue
        module = inspect.unwrap(cmd.callback).__module__
        assert module == f"geovit.cli.{path.split()[0]}", (path, module)


# ---- one meaning per option name; closed choices are enums ----


def test_each_option_name_means_one_thing():
    commands = _all_commands()
    for path, cmd in commands.items():
        flags = {o: p for p in cmd.params for o in p.opts}
        if "--top-k" in flags:  # how many cells to list or return, everywhere
            top_k = flags["--top-k"]
            assert type(top_k.default) is int and "cells" in top_k.help.lower(), path
        if "--format" in flags:  # what the command writes, never the dataset's layout
            assert "--layout" not in flags, path
    layouts = {p for p, c in commands.items() if any("--layout" in q.opts for q in c.params)}
    assert layouts == set(DATASET_COMMANDS)


@pytest.mark.parametrize(
    ("args", "bad", "valid"),
    [
        (["train", "-d", "x", "-o", "y", "--scheduler"], "cosin", "plateau, cosine"),
        (["train", "-d", "x", "-o", "y", "--precision"], "64", "bf16-mixed"),
        (["train", "-d", "x", "-o", "y", "--preset"], "tiny", "seed, small, lite"),
        (["train", "-d", "x", "-o", "y", "--arch"], "both", "hybrid, cnn, vit"),
        (["train", "-d", "x", "-o", "y", "--val-split"], "block", "random, sequence, spatial"),
        (["evaluate", "-c", "m", "-d", "x", "-o", "y", "--layout"], "csv", "osv-mini"),
        (["evaluate", "-c", "m", "-d", "x", "-o", "y", "--split"], "dev", "train, val, test"),
        (["predict", "a.jpg", "-c", "m", "--format"], "yaml", "table, json, geojson"),
        (["export", "-c", "m", "--format"], "tflite", "onnx, safetensors"),
        (["explain", "a.jpg", "-c", "m", "-o", "y", "--target"], "bottom", "true, top"),
    ],
)
def test_closed_choices_fail_naming_the_valid_values(args, bad, valid):
    res = CliRunner().invoke(app, [*args, bad], env={"COLUMNS": "300"})
    assert res.exit_code == 2
    text = " ".join(res.output.split()).replace("'", "")
    assert bad in text and all(v in text for v in valid.split(", "))


def test_cli_choice_copies_match_the_model_registry():
    """The model's presets and archs live in a torch module: the CLI's copies must match it."""
    from geovit.model import ARCHS, PRESETS

    assert tuple(PRESETS) == cli_train.PRESETS and cli_train.ARCHS == ARCHS


def test_demo_help_shows_its_defaults():
    res = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    text = " ".join(res.output.split())
    for value in (DemoSettings.n, DemoSettings.seed, DemoSettings.epochs, "demo_run"):
        assert f"[default: {value}]" in text
