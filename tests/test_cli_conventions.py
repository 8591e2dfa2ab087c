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


DATASET_COMMANDS = [
    "cells build",
    "evaluate",
    "calibrate",
    "report",
    "card",
    "shards",
    "train",
    "index",
]


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


# ---- training from a config file; the run's hyper-parameters in its logs ----


def test_config_file_unknown_key_fails_in_one_line_naming_the_valid_keys(tmp_path):
    bad = tmp_path / "run.toml"
    bad.write_text("lr = 0.001\nlearning_rate = 0.1\nfreeze-epochs = 1\n")
    res = CliRunner().invoke(app, ["train", "--config", str(bad)], env={"COLUMNS": "400"})
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "learning_rate" in lines[0] and "freeze_epochs" not in lines[0][:60]
    for key in ("lr", "freeze_epochs", "layout", "cells", "data"):
        assert f" {key}," in lines[0] or f" {key}" in lines[0].split("valid keys:")[1]
    broken = tmp_path / "run.yaml"
    broken.write_text("lr: [1\n")
    res = CliRunner().invoke(app, ["train", "--config", str(broken)])
    assert res.exit_code == 2 and "not valid YAML" in res.stderr


@pytest.fixture(scope="module")
def config_run(tiny_world, tiny_cells, tmp_path_factory):
    """A tiny run whose options come from a YAML file, two of them overridden by flags."""
    import yaml

    tmp = tmp_path_factory.mktemp("config_run")
    given = {"data": str(tiny_world), "cells": str(tiny_cells), "preset": "small",
             "image-size": 64, "pretrained": False, "epochs": 1, "freeze_epochs": 1,
             "cnn-refreeze-epoch": 1, "batch_size": 16, "workers": 0, "accelerator": "cpu",
             "limit_train_batches": 2, "limit_val_batches": 2, "progress": False,
             "lr": 0.001, "scheduler": "cosine", "val_split": "random"}  # fmt: skip
    (tmp / "run.yaml").write_text(yaml.safe_dump(given))
    out = tmp / "run"
    args = ["train", "--config", str(tmp / "run.yaml"), "--out", str(out), "--lr", "0.002"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return given, out


def test_config_file_flags_override_and_the_run_writes_it_back(config_run, tmp_path):
    import yaml

    from geovit.checkpoint import load_checkpoint

    given, out = config_run
    written = yaml.safe_load((out / "config.yaml").read_text())
    cfg = load_checkpoint(out / "model.pt").train["config"]
    assert cfg["lr"] == 0.002 and written["lr"] == 0.002  # the flag beat the file
    assert cfg["scheduler"] == "cosine" and cfg["epochs"] == 1 and cfg["batch_size"] == 16
    assert written["val_split"] == "random" and written["out"] == str(out)
    assert written["cells"] == [given["cells"]] and written["pretrained"] is False
    # every flag of the command, under its option name; run control is not configuration
    assert "freeze_epochs" in written and "layout" in written and "resume" not in written
    # the written file repeats the run
    again = tmp_path / "again"
    res = CliRunner().invoke(
        app, ["train", "--config", str(out / "config.yaml"), "--out", str(again)]
    )
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((again / "config.yaml").read_text()) == {**written, "out": str(again)}
    assert load_checkpoint(again / "model.pt").train["config"] == cfg


def test_run_logs_hold_its_hyperparameters(config_run):
    """TensorBoard and the CSV logger get TrainConfig and ModelConfig (not `{}`)."""
    import yaml

    _, out = config_run
    hparams = yaml.safe_load((out / "logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["train"]["lr"] == 0.002 and hparams["train"]["scheduler"] == "cosine"
    assert hparams["model"]["cnn"] == "resnet18" and hparams["model"]["vit"].startswith("vit_")
    events = b"".join(p.read_bytes() for p in (out / "tb").rglob("events.out.tfevents.*"))
    for key in (b"train/lr", b"model/cnn", b"resnet18", b"vit_tiny_patch16_224"):
        assert key in events, key
