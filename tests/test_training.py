"""Three-stage training: exact freezing per stage, learning, exact resume, DDP, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import timm
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset
from typer.testing import CliRunner

from geovit.cells import CellPartition
from geovit.checkpoint import load_checkpoint
from geovit.cli import app
from geovit.data.manifest import load_manifest
from geovit.errors import GeovitError
from geovit.geo import haversine_km
from geovit.model import model_config
from geovit.training import (
    PARTS,
    TRAINABLE,
    GeoDataModule,
    GeoViTModule,
    TrainConfig,
    build_datamodule,
    fit,
)

SIZE = 64  # 4x4 ViT tokens: tiny but the full architecture
K = 6
# One location per class, each in a different level-2 S2 cell (thousands of km apart).
PLACES = np.array([[40.0, -100.0], [-20.0, 130.0], [50.0, 10.0], [-30.0, -60.0], [10.0, 80.0],
                   [60.0, 100.0]])  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads thrash (several-fold slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_cells() -> CellPartition:
    """K big cells around PLACES (20 points each, level 2)."""
    rng = np.random.default_rng(0)
    pts = np.repeat(PLACES, 20, axis=0) + rng.normal(0, 0.5, (20 * K, 2))
    cells = CellPartition.build(pts[:, 0], pts[:, 1], t1=10**6, t2=1, min_level=2, max_level=2)
    assert len(cells) == K
    return cells


class ToyImages(Dataset):
    """Class k = a fixed colour and stripe pattern + noise: learnable in a few dozen steps.

    Samples follow the geovit.data.images contract: dict(image, label, index).
    """

    def __init__(self, cells: CellPartition, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        palette = np.random.default_rng(123).uniform(-1.5, 1.5, (K, 3, 1, 1))
        cls = np.arange(n) % K
        self.coords = PLACES[cls] + rng.normal(0, 0.3, (n, 2))
        self.labels = cells.assign(self.coords[:, 0], self.coords[:, 1])
        stripes = np.sin(np.arange(SIZE)[None, :] * (1 + cls[:, None]) * 0.3)  # (n, SIZE)
        x = palette[self.labels] + 0.8 * stripes[:, None, None, :]
        x = x + rng.normal(0, 0.5, (n, 3, SIZE, SIZE))
        self.images = torch.tensor(x, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i]), "index": i}


def toy_run(
    out: Path,
    *,
    n_train: int = 48,
    n_val: int = 24,
    callbacks=(),
    resume=None,
    overwrite=False,
    model_overrides=None,
    extra_cells=(),
    **overrides,
):
    cells = toy_cells()
    defaults = dict(
        epochs=3, freeze_epochs=1, cnn_refreeze_epoch=2, batch_size=8, lr=1e-3, workers=0,
        accelerator="cpu", limit_train_batches=2, limit_val_batches=1, grad_clip=1.0,
    )  # fmt: skip
    cfg = TrainConfig(**{**defaults, **overrides})
    L.seed_everything(cfg.seed, verbose=False)  # as geovit.training.train does
    mcfg = model_config("small", K, image_size=SIZE, **(model_overrides or {}))
    module = GeoViTModule(mcfg, cells, cfg, extra_cells=extra_cells)
    val = ToyImages(cells, n_val, seed=2)
    train = ToyImages(cells, n_train, seed=1)
    dm = GeoDataModule(
        train, val, val.coords, train_coords=train.coords, batch_size=cfg.batch_size, seed=cfg.seed
    )
    result = fit(
        module, dm, out, resume=resume, progress=False, callbacks=callbacks, overwrite=overwrite
    )
    return module, result


def part_of(name: str) -> str:
    return name.split(".")[1]  # "model.cnn.layer1..." -> "cnn"


class StageProbe(Callback):
    """Records, per epoch, which parameters/BN buffers changed and what the optimizer holds."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.before = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        after = pl_module.state_dict()
        changed = {k for k, v in after.items() if not torch.equal(v, self.before[k])}
        params = dict(pl_module.named_parameters())
        opt = trainer.optimizers[0]
        id_to_name = {id(p): n for n, p in params.items()}
        self.epochs.append(
            {
                "stage": pl_module.stage,
                "changed_params": {k for k in changed if k in params},
                "changed_buffers": {k for k in changed if k not in params},
                "params": set(params),
                "buffers": set(after) - set(params),
                "with_grad": {n for n, p in params.items() if p.requires_grad},
                "opt_state": {id_to_name[id(p)] for p in opt.state},
                "cnn_training": pl_module.model.cnn.training,
            }
        )


def test_each_stage_trains_exactly_its_parts(tmp_path):
    probe = StageProbe()
    toy_run(tmp_path, callbacks=[probe])
    assert [e["stage"] for e in probe.epochs] == [0, 1, 2]
    for e in probe.epochs:
        trainable = {n for n in e["params"] if part_of(n) in TRAINABLE[e["stage"]]}
        assert e["changed_params"] == trainable  # every trainable one moved, nothing else
        assert e["with_grad"] == trainable
        assert e["opt_state"] == trainable  # no stale AdamW state for frozen parts
        bn_stats = {b for b in e["buffers"] if b.endswith(("running_mean", "running_var"))}
        assert bn_stats  # the CNN has BatchNorm statistics
        cnn_frozen = "cnn" not in TRAINABLE[e["stage"]]
        assert e["cnn_training"] is not cnn_frozen
        # frozen BatchNorm keeps its statistics; training BatchNorm updates them
        assert (
            (e["changed_buffers"] & bn_stats == set())
            if cnn_frozen
            else bn_stats <= e["changed_buffers"]
        )
    assert {part_of(n) for n in probe.epochs[1]["changed_params"]} == set(PARTS)


def read_metrics(run: Path) -> pd.DataFrame:
    """Epoch rows of every CSVLogger version of a run (a resumed run adds a version)."""
    frames = [pd.read_csv(p) for p in sorted(run.glob("logs/version_*/metrics.csv"))]
    df = pd.concat(frames, ignore_index=True)
    return df.groupby("epoch").max(numeric_only=True)


def test_small_preset_learns_toy_world(tmp_path):
    _, result = toy_run(
        tmp_path,
        n_train=96,
        n_val=48,
        epochs=6,
        freeze_epochs=1,
        cnn_refreeze_epoch=5,
        batch_size=16,
        limit_train_batches=1.0,
        limit_val_batches=1.0,
    )
    m = read_metrics(tmp_path)
    first, last = m["train/loss_epoch"].iloc[0], m["train/loss_epoch"].iloc[-1]
    assert last < 0.5 * first, (first, last)
    chance = 1 / K
    assert m["val/acc1"].iloc[-1] >= 4 * chance
    assert m["train/acc"].iloc[-1] >= 4 * chance
    assert (m["val/acc3"] >= m["val/acc1"]).all() and (m["val/acc5"] >= m["val/acc3"]).all()
    # median great-circle error from predicted centroids, recomputed independently
    loaded = load_checkpoint(result.last_ckpt)
    val = ToyImages(loaded.cells, 48, seed=2)
    with torch.no_grad():
        pred = loaded.model(val.images).argmax(1).numpy()
    km = haversine_km(
        loaded.cells.centroid_lat[pred], loaded.cells.centroid_lon[pred], *val.coords.T
    )
    assert m["val/median_km"].iloc[-1] == pytest.approx(np.median(km), rel=1e-4)
    assert (m["val/acc1"].iloc[-1]) == pytest.approx(np.mean(pred == val.labels), abs=1e-6)


class StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@pytest.mark.parametrize("scheduler", ["plateau", "cosine"])
def test_resume_reproduces_uninterrupted_run(tmp_path, scheduler):
    kw = dict(epochs=4, freeze_epochs=1, cnn_refreeze_epoch=3, scheduler=scheduler,
              plateau_patience=0, warmup_epochs=1.0)  # fmt: skip
    _, straight = toy_run(tmp_path / "a", **kw)
    toy_run(tmp_path / "b", callbacks=[StopAfter(1)], **kw)
    assert load_checkpoint(tmp_path / "b" / "last.ckpt").train["epoch"] == 1
    _, resumed = toy_run(tmp_path / "b", resume=tmp_path / "b" / "last.ckpt", **kw)
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    cols = ["val/loss", "val/acc1", "val/median_km", "train/loss_epoch"]
    assert len(a) == len(b) == 4
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)
    lr = [c for c in a.columns if c.startswith("lr-")]
    pd.testing.assert_frame_equal(a[lr], b[lr], check_exact=True)
    sa = torch.load(straight.model_path, weights_only=True)["state_dict"]
    sb = torch.load(resumed.model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


DDP_SCRIPT = """
import sys, pathlib, torch
sys.path.insert(0, {tests!r})
import test_training as t
seen = t.SeenIndices()
module, result = t.toy_run(pathlib.Path({out!r}), devices=2, n_train=32, limit_train_batches=1.0,
                           epochs=3, callbacks=[seen])
torch.save({{"weights": {{k: v.detach() for k, v in module.model.state_dict().items()}},
            "seen": seen.indices}}, f"{out}/rank{{module.global_rank}}.pt")
"""


class SeenIndices(Callback):
    """The sample indices each epoch's training batches held (in this process)."""

    def __init__(self) -> None:
        self.indices: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.indices.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())


def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    script, out = tmp_path / "ddp_run.py", tmp_path / "run"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    # each process trained on its own half of the data ...
    for epoch in range(3):
        seen0, seen1 = r0["seen"][epoch], r1["seen"][epoch]
        assert sorted(seen0 + seen1) == list(range(32))
    # ... yet gradients were averaged, so both end with the same weights, which did move
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])
    saved = load_checkpoint(out / "model.pt")
    assert saved.train["config"]["devices"] == 2
    L.seed_everything(0, verbose=False)
    init = GeoViTModule(model_config("small", K, image_size=SIZE), toy_cells(), TrainConfig())
    assert not torch.equal(init.model.head.weight, r0["weights"]["head.weight"])


def test_outside_rows_are_counted_and_excluded(tiny_world, tiny_cells):
    manifest, _ = load_manifest(tiny_world)
    cells = CellPartition.load(tiny_cells)
    far = pd.DataFrame(  # Antarctica: no tiny-world cell comes near
        {"id": ["x1", "x2", "x3", "x4", "x5"], "image": manifest["image"].iloc[:5].to_numpy(),
         "latitude": -80.0, "longitude": 0.0, "split": ["train"] * 3 + ["val"] * 2}
    )  # fmt: skip
    kw = dict(image_size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3, config=TrainConfig(workers=0))
    _, base = build_datamodule(manifest, cells, **kw)
    dm, rep = build_datamodule(pd.concat([manifest, far], ignore_index=True), cells, **kw)
    assert rep.n_train_outside == base.n_train_outside + 3
    assert rep.n_val_outside == base.n_val_outside + 2
    assert len(dm.train_ds) == rep.n_train == base.n_train
    assert len(dm.val_ds) == rep.n_val == base.n_val + 2  # kept: they count as misses
    n_rows = (manifest["split"] == "train").sum()
    assert base.n_train + base.n_train_outside == n_rows
    assert (dm.val_coords[-2:] == [[-80.0, 0.0], [-80.0, 0.0]]).all()


def test_train_cli_on_tiny_world(tmp_path, tiny_world, tiny_cells):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_world), "--cells", str(tiny_cells), "--out", str(out),
            "--preset", "small", "--image-size", str(SIZE), "--no-pretrained", "--epochs", "2",
            "--freeze-epochs", "1", "--cnn-refreeze-epoch", "2", "--batch-size", "16",
            "--workers", "0", "--accelerator", "cpu", "--limit-train-batches", "2",
            "--limit-val-batches", "2", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "outside the kept cells" in result.output
    assert "kept epoch" in result.output and "val/geoscore =" in result.output  # the default
    for name in ("best.ckpt", "last.ckpt", "model.pt", "logs/version_0/metrics.csv"):
        assert (out / name).is_file(), name
    assert list((out / "tb").rglob("events.out.tfevents.*"))
    model = load_checkpoint(out / "model.pt")
    best = load_checkpoint(out / "best.ckpt")
    assert all(
        torch.equal(v, best.model.state_dict()[k]) for k, v in model.model.state_dict().items()
    )
    assert list(model.cells.tokens) == list(CellPartition.load(tiny_cells).tokens)
    assert model.train["config"]["epochs"] == 2 and model.image_size == SIZE
    assert set(model.train["val"]) >= {"val/loss", "val/acc1", "val/acc5", "val/median_km"}

    # resuming needs the Lightning checkpoint, not the weights-only model.pt
    bad = CliRunner().invoke(app, [*args, "--resume", str(out / "model.pt")])
    assert bad.exit_code == 2 and "last.ckpt" in bad.output
    more = CliRunner().invoke(
        app, [*args[:-1], "--epochs", "3", "--resume", str(out / "last.ckpt")]
    )
    assert more.exit_code == 0, more.output
    assert load_checkpoint(out / "last.ckpt").train["epoch"] == 2


def test_train_cli_reports_missing_weights_in_one_line(tmp_path, tiny_world, tiny_cells):
    missing = tmp_path / "no.pth"
    args = ["train", "--data", str(tiny_world), "--cells", str(tiny_cells), "--out",
            str(tmp_path / "r"), "--preset", "small", "--cnn-weights", str(missing)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "no.pth" in result.output and "not found" in result.output
    assert not (tmp_path / "r" / "last.ckpt").exists()


def test_train_cli_archs_and_per_part_weight_sources(tmp_path, tiny_world, tiny_cells, offline):
    """--cnn-weights decides the CNN alone, offline; each part's source and count is printed."""
    good = tmp_path / "r18.safetensors"
    full = timm.create_model("resnet18").state_dict()
    safetensors.torch.save_file(full, good)
    base = ["train", "--data", str(tiny_world), "--cells", str(tiny_cells), "--preset", "small",
            "--image-size", str(SIZE), "--epochs", "1", "--freeze-epochs", "1",
            "--cnn-refreeze-epoch", "1", "--batch-size", "16", "--workers", "0",
            "--accelerator", "cpu", "--limit-train-batches", "2", "--limit-val-batches", "2",
            "--no-progress"]  # fmt: skip
    hybrid = ["--out", str(tmp_path / "h"), "--cnn-weights", str(good), "--no-pretrained-vit"]
    run = CliRunner().invoke(app, [*base, *hybrid])
    assert run.exit_code == 0, run.output
    n = len(full) - 2  # all but the classifier
    assert f"cnn resnet18: weights from {good}: loaded {n}/{n} tensors" in run.output
    assert "vit vit_tiny_patch16_224: random" in run.output
    assert "stage 0 (epochs 0-0) freezes vit vit_tiny_patch16_224, which has random" in run.output
    assert "freezes cnn" not in run.output
    vit_only = ["--out", str(tmp_path / "v"), "--arch", "vit", "--no-pretrained"]
    vit_run = CliRunner().invoke(app, [*base, *vit_only])
    assert vit_run.exit_code == 0, vit_run.output
    loaded = load_checkpoint(tmp_path / "v" / "model.pt")
    assert loaded.config.arch == "vit" and loaded.model.cnn is None
    assert loaded.mean == (0.5, 0.5, 0.5)  # the ViT sees the pixels: its own normalization
    # a file for another model fails in one line, before any training
    other = ["--out", str(tmp_path / "w"), "--cnn", "resnet34", *hybrid[2:]]
    wrong = CliRunner().invoke(app, [*base, *other])
    assert wrong.exit_code == 2 and "does not fit cnn resnet34" in wrong.output
    assert not (tmp_path / "w" / "last.ckpt").exists()


def test_stage_warning_names_the_stages_that_run():
    """--epochs 2 with the default --freeze-epochs 3 trains the heads only: say so."""
    from geovit.training import TrainConfig

    short = TrainConfig(epochs=2)
    assert short.stage_spans() == [("heads", 0, 1)]
    note = short.stage_warning()
    assert "heads (epochs 0-1)" in note and "skipped: full, vit" in note
    mid = TrainConfig(epochs=10)
    assert mid.stage_spans() == [("heads", 0, 2), ("full", 3, 9)]
    assert "skipped: vit" in mid.stage_warning()
    assert TrainConfig().stage_warning() is None  # 23 epochs: 0-2, 3-19, 20-22
    assert TrainConfig().stage_spans() == [("heads", 0, 2), ("full", 3, 19), ("vit", 20, 22)]
    # The schedule itself agrees: stage(epoch) over the epochs gives the same spans.
    assert [short.stage(e) for e in range(2)] == [0, 0]
    assert {mid.stage(e) for e in range(10)} == {0, 1}


@pytest.mark.parametrize("monitor", ["val/acc1", "val/median_km", "val/geoscore", "val/loss"])
def test_kept_epoch_is_the_best_by_the_chosen_monitor(tmp_path, monitor):
    _, result = toy_run(tmp_path, epochs=4, monitor=monitor, limit_val_batches=3)
    logged = pd.read_csv(tmp_path / "logs" / "version_0" / "metrics.csv")
    per_epoch = logged.dropna(subset=[monitor]).groupby("epoch")[monitor].last()
    higher = monitor in ("val/acc1", "val/geoscore")
    best = per_epoch.idxmax() if higher else per_epoch.idxmin()  # first of any ties, as Lightning
    model = load_checkpoint(result.model_path)
    want = {"epoch": int(best), "monitor": monitor, "mode": "max" if higher else "min"}
    assert {k: model.train["kept"][k] for k in want} == want == {k: result.kept[k] for k in want}
    assert model.train["kept"]["value"] == pytest.approx(per_epoch[best])
    assert model.train["epoch"] == best and model.train["config"]["monitor"] == monitor


def test_val_geoscore_is_the_mean_score_of_the_kept_model(tmp_path):
    """val/geoscore recomputed from the kept weights: 5000 exp(-d / 1492.7) per val image."""
    _, result = toy_run(tmp_path, epochs=2, n_val=12, batch_size=8, limit_val_batches=2)
    model = load_checkpoint(result.model_path)
    cells = toy_cells()
    val = ToyImages(cells, 12, seed=2)
    with torch.no_grad():
        top = model.model(val.images).argmax(dim=1).numpy()
    km = haversine_km(cells.centroid_lat[top], cells.centroid_lon[top], *val.coords.T)
    assert model.train["val"]["val/geoscore"] == pytest.approx(
        np.mean(5000 * np.exp(-km / 1492.7)), rel=1e-5
    )


def test_unknown_monitor_names_the_valid_ones():
    with pytest.raises(GeovitError, match="val/acc1, val/median_km"):
        TrainConfig(monitor="val/acc")
    result = CliRunner().invoke(app, ["train", "--data", "x", "--out", "y", "--monitor", "acc"])
    assert result.exit_code == 2 and "val/geoscore" in result.output


def test_hybrid_head_haversine_loss_and_a_coarser_partition_train_together(tmp_path: Path):
    """The issue's options at once: every loss term is logged and learns, the offsets move from
    zero, and model.pt keeps the head, the coarse cells and the fine -> coarse parents."""
    rng = np.random.default_rng(1)
    pts = np.repeat(PLACES, 20, axis=0) + rng.normal(0, 0.5, (20 * K, 2))
    coarse = CellPartition.build(pts[:, 0], pts[:, 1], t1=10**6, t2=1, min_level=1, max_level=1)
    _, result = toy_run(
        tmp_path, model_overrides={"head": "hybrid", "extra_classes": [len(coarse)]},
        extra_cells=[coarse], loss="haversine", tau=500.0, freeze_epochs=0,
    )  # fmt: skip
    logged = pd.read_csv(tmp_path / "logs" / "version_0" / "metrics.csv")
    for term in ("train/loss_cls", "train/loss_cls1", "train/loss_offset"):
        values = logged[term].dropna().to_numpy()
        assert len(values) == 3 and np.isfinite(values).all(), term
    ckpt = load_checkpoint(result.model_path)
    assert ckpt.config.head == "hybrid" and [len(c) for c in ckpt.extra_cells] == [len(coarse)]
    assert ckpt.model.head.offset.weight.abs().sum() > 0  # initialised at zero: it learned
    parents = ckpt.cells.parents_in(coarse)
    assert torch.equal(ckpt.model.head.parent_0, torch.from_numpy(parents))
    assert ckpt.train["config"]["loss"] == "haversine"
