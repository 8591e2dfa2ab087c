"""CLI command: `geovit train` (three-stage GeoViT training, 1 CPU to many GPUs).

Its hyper-parameter flags are generated from TrainConfig's fields (defaults included), so a new
field is a flag by itself; its help line goes in TRAIN_HELP.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from geovit.cli._app import app
from geovit.cli._common import (
    CACHE_DIR,
    DATA,
    THREADS,
    choices,
    console,
    dataset_options,
    err_console,
    friendly,
    grouped,
    load_split_manifest,
    option,
    plain,
    set_threads,
)
from geovit.cli._config_file import CONFIG, write_config
from geovit.dataset_options import DatasetOptions
from geovit.errors import GeovitError
from geovit.monitor import Monitor
from geovit.train_config import PRECISIONS, SCHEDULERS, TrainConfig

PRESETS = ("seed", "small", "lite")  # geovit.model.PRESETS (torch-free copy; a test compares)
ARCHS = ("hybrid", "cnn", "vit")  # geovit.model.ARCHS (likewise)
Preset = choices("Preset", PRESETS)
Arch = choices("Arch", ARCHS)

TRAIN_HELP = {
    "epochs": "Total epochs over all three stages.",
    "freeze_epochs": "Stage 1 (all layers) starts at this epoch.",
    "cnn_refreeze_epoch": "Stage 2 (CNN frozen) starts at this epoch.",
    "batch_size": "Images per device per step.",
    "lr": "AdamW learning rate.",
    "weight_decay": "AdamW weight decay (not on norms/biases).",
    "scheduler": "LR schedule: plateau (on val loss) or cosine (with warmup).",
    "plateau_factor": "plateau: multiply the LR by this when val loss stalls.",
    "plateau_patience": "plateau: epochs without improvement before the LR drops.",
    "warmup_epochs": "Cosine warmup length in epochs.",
    "label_smoothing": "Cross-entropy label smoothing (ce loss).",
    "loss": "ce (cross-entropy) or haversine (PIGEON's geographic smoothing).",
    "tau": "Haversine smoothing temperature in km.",
    "offset_weight": "Weight of the hybrid head's offset loss.",
    "offset_loss": "l1 or l2 offset loss.",
    "grad_clip": "Clip the gradient norm (0: off).",
    "precision": "Numeric precision of training.",
    "channels_last": "channels_last memory format for the CNN.",
    "hflip": "Random horizontal flips (swap driving sides!).",
    "workers": "DataLoader worker processes per device.",
    "accelerator": "auto, cpu, gpu, ...",
    "devices": "Devices per node (e.g. 4, or auto).",
    "num_nodes": "Nodes (DDP; launch with torchrun or srun).",
    "seed": "Seed of initialisation, shuffling and augmentation.",
    "limit_train_batches": "Fraction (<=1) or count of batches.",
    "limit_val_batches": "Fraction (<=1) or count of batches.",
    "monitor": "Validation metric whose best epoch is kept as model.pt (the default was "
    "measured best on real photos).",
}
CHOICES = {
    "scheduler": choices("Scheduler", SCHEDULERS),
    "precision": choices("Precision", PRECISIONS),
    "monitor": Monitor,
}


def _batches(value: float) -> int | float:
    """Lightning reads 1.0 as 'all batches' and an int as a count."""
    return int(value) if value > 1 else value


def _devices(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


FROM_CLI: dict[str, Callable[[Any], Any]] = {  # where a flag's value is not the field's as it is
    "grad_clip": lambda v: v or None,
    "devices": _devices,
    "limit_train_batches": _batches,
    "limit_val_batches": _batches,
}


def _cli_type(name: str, hint: Any) -> Any:
    """The flag's type: the field's choices as an Enum, else its (non-None) type; a field that
    takes int or str (devices) is read as str, int or float (batch limits) as float."""
    if name in CHOICES:
        return CHOICES[name]
    kinds = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return kinds[0] if len(kinds) == 1 else str if str in kinds else float


def _train_options() -> tuple[typing.Any, ...]:
    hints = typing.get_type_hints(TrainConfig)
    return tuple(
        option(f.name, _cli_type(f.name, hints[f.name]),
               typer.Option(f.default, help=TRAIN_HELP.get(f.name, f"TrainConfig.{f.name}")))
        for f in dataclasses.fields(TrainConfig)
    )  # fmt: skip


def _train_config(**values: Any) -> TrainConfig:
    return TrainConfig(**{k: FROM_CLI.get(k, plain)(plain(v)) for k, v in values.items()})


TRAIN_OPTIONS = _train_options()
train_options = grouped("hparams", TRAIN_OPTIONS, _train_config)


@app.command("train")
@friendly
@dataset_options
@train_options
def train(
    ctx: typer.Context,
    data: Path = DATA,
    cells_paths: list[Path] = typer.Option(
        None,
        "--cells",
        help="cells.parquet from `geovit cells build` (not with --resume). Repeat it to train "
        "several partitions at once, coarse first: the last is the one predicted, the others "
        "multiply in their parent cell's probability.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, logs, model.pt."),
    config_file: Path = CONFIG,
    preset: Preset = typer.Option(
        Preset.seed,
        help="Model defaults: seed (the design, GPU), small (CPU), lite (EfficientNet-Lite0 with "
        "offline ImageNet weights from geovit[lite]); --cnn/--vit/--arch override them.",
    ),
    arch: Arch = typer.Option(
        None, help="hybrid (CNN -> ViT, the design), cnn or vit alone (default: hybrid)."
    ),
    cnn: str = typer.Option(None, "--cnn", help="timm CNN name (default: the preset's)."),
    vit: str = typer.Option(None, "--vit", help="timm ViT name (default: the preset's)."),
    image_size: int = typer.Option(None, help="Input size in pixels (default: the preset's)."),
    pretrained: bool = typer.Option(
        True,
        help="Real weights for both parts: a local file, an installed package or timm's "
        "download (--pretrained-cnn/-vit decide one part).",
    ),
    pretrained_cnn: bool = typer.Option(None, help="Real CNN weights (default: --pretrained)."),
    pretrained_vit: bool = typer.Option(
        None, help="Real ViT weights (default: --pretrained; the lite preset: no)."
    ),
    cnn_weights: Path = typer.Option(None, help="Local CNN weights (.safetensors/.pth)."),
    vit_weights: Path = typer.Option(None, help="Local ViT weights (.safetensors/.pth)."),
    head: str = typer.Option(
        None, help="linear (cells) or hybrid (cells + offset within the cell) (default: linear)."
    ),
    threads: int = THREADS,
    cache_dir: Path = CACHE_DIR,
    resume: Path = typer.Option(None, help="Continue a run from its last.ckpt."),
    overwrite: bool = typer.Option(
        False, help="Replace the run already in --out (its checkpoints, model.pt and logs)."
    ),
    progress: bool = typer.Option(True, help="Rich progress bars."),
    *,
    dataset: DatasetOptions,
    hparams: TrainConfig,
) -> None:
    """Train GeoViT on DATA's train split (three stages), validating on its val split.

    Options may come from --config FILE; the effective ones are written to OUT/config.yaml."""
    from lightning.pytorch.utilities import rank_zero_only

    from geovit.cells import CellPartition
    from geovit.model import model_config
    from geovit.training import build_datamodule, resume_model
    from geovit.training import train as run_training

    config = hparams
    if (note := config.stage_warning()) is not None:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False)
    processes = config.devices if isinstance(config.devices, int) and config.devices > 0 else 1
    set_threads(threads, config.workers, processes)
    if resume is not None:
        model_cfg, cells, extra_cells = resume_model(resume)
        console.print(f"resuming {resume}: model and cells come from the checkpoint")
    elif not cells_paths:
        raise GeovitError("--cells is required: pass the cells.parquet from `geovit cells build`")
    else:
        *extra_cells, cells = [CellPartition.load(p) for p in cells_paths]
        model_cfg = model_config(
            plain(preset),
            len(cells),
            head=head,
            extra_classes=[len(c) for c in extra_cells] or None,
            arch=plain(arch),
            cnn=cnn,
            vit=vit,
            pretrained=pretrained,
            cnn_pretrained=pretrained_cnn,
            vit_pretrained=pretrained_vit,
            cnn_weights=str(cnn_weights) if cnn_weights else None,
            vit_weights=str(vit_weights) if vit_weights else None,
            image_size=image_size,
        )
    from geovit.data.shards import open_shards

    root = open_shards(data, cache_dir)  # shards: a folder, or the local mirror of a URL's
    manifest, _ = load_split_manifest(root or data, dataset)
    build = build_datamodule
    if root is not None:  # streamed from the shards
        from geovit.streaming import build_shard_datamodule

        build = functools.partial(build_shard_datamodule, root=root)
    result, data_report = run_training(
        manifest, cells, out, model_cfg, config, resume=resume, progress=progress, build=build,
        notify=rank_zero_only(lambda line: console.print(line, highlight=False, soft_wrap=True)),
        overwrite=overwrite, extra_cells=extra_cells,
    )  # fmt: skip
    if rank_zero_only.rank != 0:
        return  # under DDP every process runs this command; one summary is enough
    write_config(ctx, out / "config.yaml")
    for line in data_report.lines():
        console.print(line, highlight=False)
    bad = ", ".join(f"{k.split('/')[0]} {v}" for k, v in result.bad_images.items() if v)
    if bad:
        console.print(f"unreadable images skipped in the last epoch: {bad} (see the warnings)")
    if result.interrupted:
        _report_interrupt(result)
    best = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.best.items()))
    kept = result.kept
    console.print(
        f"kept epoch {kept['epoch']} as model.pt: its {kept['monitor']} = {kept['value']:.4g} "
        f"was the {'highest' if kept['mode'] == 'max' else 'lowest'} (--monitor)",
        highlight=False,
    )
    console.print(f"metrics of that epoch: {best}", highlight=False)
    console.print(
        f"checkpoints: {result.best_ckpt}, {result.last_ckpt}; model: {result.model_path}"
    )


def resume_command(argv: list[str], last_ckpt: Path) -> str:
    """The command line that continues an interrupted run: the same one with --resume."""
    import shlex

    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith(("--resume=", "--overwrite", "--no-overwrite")):
            kept.append(arg)
    return shlex.join(["geovit", *kept, "--resume", str(last_ckpt)])


def _report_interrupt(result) -> None:
    """After Ctrl-C/SIGTERM: say what was kept and how to continue, exit 130."""
    import sys

    if not result.last_ckpt.is_file():
        err_console.print("interrupted before the first epoch completed: nothing was saved")
        raise typer.Exit(130)
    err_console.print(
        f"interrupted: {result.last_ckpt} holds the last complete epoch and {result.model_path} "
        f"the best one; resume with:\n  {resume_command(sys.argv[1:], result.last_ckpt)}",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(130)
