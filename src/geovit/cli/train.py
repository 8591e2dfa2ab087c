"""CLI command: `geovit train` (three-stage GeoViT training, 1 CPU to many GPUs)."""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from geovit.cli._app import app
from geovit.cli._common import (
    CACHE_DIR,
    DATA,
    DATA_FORMAT,
    ENCODING,
    IMAGE_COL,
    IMAGE_TEMPLATE,
    LAT_COL,
    LON_COL,
    SEP,
    SPLIT_SEED,
    THREADS,
    VAL_FRACTION,
    VAL_SPLIT,
    TableColumns,
    console,
    err_console,
    friendly,
    load_split_manifest,
    set_threads,
)
from geovit.errors import GeovitError
from geovit.monitor import Monitor


@app.command("train")
@friendly
def train(
    data: Path = DATA,
    cells_paths: list[Path] = typer.Option(
        None,
        "--cells",
        help="cells.parquet from `geovit cells build` (not with --resume). Repeat it to train "
        "several partitions at once, coarse first: the last is the one predicted, the others "
        "multiply in their parent cell's probability.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, logs, model.pt."),
    preset: str = typer.Option(
        "seed",
        help="Model defaults: seed (the design, GPU), small (CPU), lite (EfficientNet-Lite0 with "
        "offline ImageNet weights from geovit[lite]); --cnn/--vit/--arch override them.",
    ),
    arch: str = typer.Option(
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
    epochs: int = typer.Option(23, help="Total epochs over all three stages."),
    freeze_epochs: int = typer.Option(3, help="Stage 1 (all layers) starts at this epoch."),
    cnn_refreeze_epoch: int = typer.Option(20, help="Stage 2 (CNN frozen) starts at this epoch."),
    batch_size: int = typer.Option(64, help="Images per device per step."),
    lr: float = typer.Option(1e-4, help="AdamW learning rate."),
    weight_decay: float = typer.Option(0.05, help="AdamW weight decay (not on norms/biases)."),
    scheduler: str = typer.Option("plateau", help="plateau (on val loss) or cosine (warmup)."),
    warmup_epochs: float = typer.Option(1.0, help="Cosine warmup length in epochs."),
    label_smoothing: float = typer.Option(0.0, help="Cross-entropy label smoothing."),
    head: str = typer.Option(
        None, help="linear (cells) or hybrid (cells + offset within the cell) (default: linear)."
    ),
    loss: str = typer.Option(
        "ce", help="ce (cross-entropy) or haversine (PIGEON's geographic smoothing)."
    ),
    tau: float = typer.Option(75.0, help="Haversine smoothing temperature in km."),
    offset_weight: float = typer.Option(1.0, help="Weight of the hybrid head's offset loss."),
    offset_loss: str = typer.Option("l1", help="l1 or l2 offset loss."),
    grad_clip: float = typer.Option(1.0, help="Clip the gradient norm (0: off)."),
    precision: str = typer.Option("32", help="32, bf16-mixed or 16-mixed."),
    channels_last: bool = typer.Option(False, help="channels_last memory format for the CNN."),
    hflip: bool = typer.Option(False, help="Random horizontal flips (swap driving sides!)."),
    workers: int = typer.Option(4, help="DataLoader worker processes per device."),
    threads: int = THREADS,
    monitor: Monitor = typer.Option(
        None,
        help="Validation metric whose best epoch is kept as model.pt "
        "(default: TrainConfig.monitor, measured best on real photos).",
    ),
    accelerator: str = typer.Option("auto", help="auto, cpu, gpu, ..."),
    devices: str = typer.Option("1", help="Devices per node (e.g. 4, or auto)."),
    num_nodes: int = typer.Option(1, help="Nodes (DDP; launch with torchrun or srun)."),
    seed: int = typer.Option(0, help="Seed of initialisation, shuffling and augmentation."),
    val_fraction: float = VAL_FRACTION,
    val_split: str = VAL_SPLIT,
    split_seed: int = SPLIT_SEED,
    fmt: str = DATA_FORMAT,
    image_col: str = IMAGE_COL,
    lat_col: str = LAT_COL,
    lon_col: str = LON_COL,
    image_template: str = IMAGE_TEMPLATE,
    sep: str = SEP,
    encoding: str = ENCODING,
    cache_dir: Path = CACHE_DIR,
    limit_train_batches: float = typer.Option(1.0, help="Fraction (<=1) or count of batches."),
    limit_val_batches: float = typer.Option(1.0, help="Fraction (<=1) or count of batches."),
    resume: Path = typer.Option(None, help="Continue a run from its last.ckpt."),
    overwrite: bool = typer.Option(
        False, help="Replace the run already in --out (its checkpoints, model.pt and logs)."
    ),
    progress: bool = typer.Option(True, help="Rich progress bars."),
) -> None:
    """Train GeoViT on DATA's train split (three stages), validating on its val split."""
    from lightning.pytorch.utilities import rank_zero_only

    from geovit.cells import CellPartition
    from geovit.model import model_config
    from geovit.training import TrainConfig, build_datamodule, resume_model
    from geovit.training import train as run_training

    config = TrainConfig(
        epochs=epochs,
        freeze_epochs=freeze_epochs,
        cnn_refreeze_epoch=cnn_refreeze_epoch,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        scheduler=scheduler,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        loss=loss,
        tau=tau,
        offset_weight=offset_weight,
        offset_loss=offset_loss,
        grad_clip=grad_clip or None,
        precision=precision,
        channels_last=channels_last,
        hflip=hflip,
        workers=workers,
        accelerator=accelerator,
        devices=int(devices) if devices.lstrip("-").isdigit() else devices,
        num_nodes=num_nodes,
        seed=seed,
        limit_train_batches=_batches(limit_train_batches),
        limit_val_batches=_batches(limit_val_batches),
        **({"monitor": monitor.value} if monitor else {}),
    )
    if (note := config.stage_warning()) is not None:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False)
    processes = config.devices if isinstance(config.devices, int) and config.devices > 0 else 1
    set_threads(threads, workers, processes)
    if resume is not None:
        model_cfg, cells, extra_cells = resume_model(resume)
        console.print(f"resuming {resume}: model and cells come from the checkpoint")
    elif not cells_paths:
        raise GeovitError("--cells is required: pass the cells.parquet from `geovit cells build`")
    else:
        *extra_cells, cells = [CellPartition.load(p) for p in cells_paths]
        model_cfg = model_config(
            preset,
            len(cells),
            head=head,
            extra_classes=[len(c) for c in extra_cells] or None,
            arch=arch,
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
    columns = TableColumns(image_col, lat_col, lon_col, image_template, sep, encoding)
    manifest, _ = load_split_manifest(
        root or data, fmt, val_fraction, val_split, split_seed, columns
    )
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


def _batches(value: float) -> int | float:
    """Lightning reads 1.0 as 'all batches' and an int as a count."""
    return int(value) if value > 1 else value
