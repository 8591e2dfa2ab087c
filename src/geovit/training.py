"""Three-stage GeoViT training with Lightning, from one CPU to many GPUs.

Stages (epoch boundaries configurable; the design's defaults):
  0 "heads"  epochs [0, freeze_epochs):                 proj + head learn; CNN and ViT frozen
  1 "full"   epochs [freeze_epochs, cnn_refreeze_epoch): everything learns
  2 "vit"    epochs [cnn_refreeze_epoch, epochs):       CNN frozen again; ViT, proj, head learn

A frozen part gets ``requires_grad=False`` (no gradient, so AdamW neither updates nor decays
it), its modules stay in eval mode (BatchNorm statistics fixed, re-applied whenever Lightning
calls ``.train()``), and its AdamW state is deleted. The optimizer itself is built once over all
parameters: AdamW skips parameters whose gradient is None, so one optimizer with a fixed
parameter layout serves every stage, its checkpointed state maps back by position on resume,
and the LR schedule runs on uninterrupted across stage boundaries (rebuilding the optimizer at a
boundary would restart the schedule and lose the state needed for an exact resume).

Reproducibility: the training sampler shuffles with (seed, epoch) and every process reseeds its
RNGs at the start of each epoch from (seed, epoch, rank), so an epoch's randomness does not
depend on history and ``--resume`` reproduces the uninterrupted run on the CPU exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchmetrics import CatMetric

from geovit.cells import CellPartition
from geovit.checkpoint import contract_fields, load_checkpoint, read_raw, save_checkpoint
from geovit.data.images import (
    ImageDataset,
    build_transform,
    collate_skip_bad,
    decode_image,
    read_image_bytes,
)
from geovit.errors import GeovitError
from geovit.fileio import atomic_write
from geovit.geo import geoscore, haversine_km
from geovit.losses import create_loss
from geovit.model import GeoViT, ModelConfig
from geovit.monitor import Monitor
from geovit.train_config import STAGES, TrainConfig

log = logging.getLogger(__name__)

PARTS = ("cnn", "proj", "vit", "head")  # GeoViT.named_parts(), in that order
TRAINABLE: dict[int, tuple[str, ...]] = {
    0: ("proj", "head"),
    1: ("cnn", "proj", "vit", "head"),
    2: ("proj", "vit", "head"),
}
TOPK = (1, 3, 5)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices/kernels; no decay on norms, biases and position embeddings.

    Frozen parameters are included (they simply have no gradient), so the group layout is the
    same in every stage and on resume.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith("pos_embed") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def epoch_seed(seed: int, epoch: int, rank: int, stream: int = 0) -> int:
    """A well-mixed 32-bit seed for one (run seed, epoch, process, use) tuple."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


class EpochSeededLoader(DataLoader):
    """A DataLoader whose worker seeds depend only on (seed, epoch, rank).

    DataLoader draws its workers' base seed when an iterator is created; Lightning creates the
    first epoch's iterator of a (resumed) run before ``on_train_epoch_start``, later ones after,
    so drawing from the global RNG would make augmentation depend on where a run started.
    """

    def __init__(self, *args, seed: int, trainer: L.Trainer, **kwargs) -> None:
        super().__init__(*args, generator=torch.Generator(), **kwargs)
        self._seed, self._trainer = seed, trainer

    @property
    def epoch(self) -> int:
        """The epoch this iterator serves: the one Lightning gives samplers' set_epoch
        (``current_epoch`` still names the checkpoint's epoch when a resumed run starts)."""
        return self._trainer.fit_loop.epoch_progress.current.processed

    def __iter__(self):
        t = self._trainer
        self.generator.manual_seed(epoch_seed(self._seed, self.epoch, t.global_rank, 1))
        if hasattr(self.sampler, "set_epoch"):
            # worker prefetching draws the first indices now, before Lightning sets the epoch
            self.sampler.set_epoch(self.epoch)
        return super().__iter__()


class GeoViTModule(L.LightningModule):
    """GeoViT + loss, metrics, stage-aware freezing and the optimizer set-up.

    ``extra_cells``: coarser partitions trained at once (one classifier each; the model's
    logits combine them, see geovit.heads), their labels assigned from each photo's coordinates.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        cells: CellPartition,
        config: TrainConfig,
        data_info: dict | None = None,
        extra_cells: Sequence[CellPartition] = (),
    ) -> None:
        super().__init__()
        sizes = [len(c) for c in (cells, *extra_cells)]
        wanted = [model_config.num_classes, *model_config.extra_classes]
        if sizes != wanted:
            raise GeovitError(
                f"model has {wanted} classes (main, then coarser partitions) but the cells files "
                f"{sizes}: build the model config from these cells"
            )
        # the run's hyper-parameters for the loggers (TensorBoard's HPARAMS tab, hparams.yaml)
        self.save_hyperparameters({"train": dataclasses.asdict(config),
                                   "model": model_config.to_dict()})  # fmt: skip
        self.model = GeoViT(model_config)
        self.cells = cells
        self.extra_cells = tuple(extra_cells)
        self.model.head.set_parents([torch.from_numpy(cells.parents_in(c)) for c in extra_cells])
        self.config = config
        self.loss_fn = create_loss(config.loss, label_smoothing=config.label_smoothing,
                                   tau=config.tau)  # fmt: skip
        self.data_info = dict(data_info or {})
        self.stage = -1
        self.frozen: tuple[str, ...] = ()
        for i, part in enumerate((cells, *extra_cells)):
            centroids = np.stack([part.centroid_lat, part.centroid_lon], axis=1)
            self.register_buffer(f"centroids_{i}", torch.from_numpy(centroids), persistent=False)
        self.val_km = CatMetric(nan_strategy="error")
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @property
    def centroids(self) -> torch.Tensor:
        """(K, 2) float64 centroids of the main partition's cells."""
        return self.centroids_0

    # ---- stages ----------------------------------------------------------------------------
    def set_stage(self, stage: int) -> None:
        """Freeze/unfreeze the parts for ``stage`` and drop optimizer state of frozen ones."""
        self.stage = stage
        parts = self.model.named_parts()
        self.frozen = tuple(p for p in parts if p not in TRAINABLE[stage])
        optimizers = self._trainer.optimizers if self._trainer is not None else []
        for name, module in parts.items():
            trainable = name not in self.frozen
            module.requires_grad_(trainable)
            if not trainable:
                for p in module.parameters():
                    p.grad = None
                    for opt in optimizers:
                        opt.state.pop(p, None)
        self.train(self.training)

    def train(self, mode: bool = True) -> GeoViTModule:
        """Lightning calls this every epoch: keep frozen parts (their BatchNorm) in eval mode."""
        super().train(mode)
        if mode:
            parts = self.model.named_parts()
            for name in self.frozen:
                parts[name].eval()
        return self

    # ---- steps -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _step(self, batch: dict, coords: np.ndarray) -> tuple[dict, dict[str, torch.Tensor]]:
        """The model's outputs and loss terms of one batch, the same in training and validation:
        the classification loss on every partition (labels of coarser ones assigned from the
        coordinates) plus the head's own loss (e.g. the hybrid head's offsets)."""
        x = batch["image"]
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.model.forward_outputs(x)
        labels = batch["label"]
        xy = torch.as_tensor(coords, dtype=torch.float64, device=self.device)
        terms: dict[str, torch.Tensor] = {}
        for i, logits in enumerate(out["partition_logits"]):
            part_labels = labels if i == 0 else torch.as_tensor(
                self.extra_cells[i - 1].assign(coords[:, 0], coords[:, 1]), device=self.device
            )  # fmt: skip
            centroids = getattr(self, f"centroids_{i}")
            terms[f"cls{i}" if i else "cls"] = self.loss_fn(logits, part_labels, xy, centroids)
        offsets = None
        if "offset" in out:  # the hybrid head's targets
            offsets = torch.as_tensor(
                self.cells.offsets(labels.cpu().numpy(), coords[:, 0], coords[:, 1]),
                device=self.device,
            )
        aux = self.model.head.aux_loss(out, labels, offsets, self.config.offset_loss)
        if aux is not None:
            terms["offset"] = self.config.offset_weight * aux
        return out, terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        n = len(batch["label"])
        self.log("train/bad_images", float(batch["n_bad"]), on_step=False, on_epoch=True,
                 reduce_fx="sum", sync_dist=True, batch_size=max(n, 1))  # fmt: skip
        if n == 0:
            return None  # every image of the batch was unreadable (already warned per image)
        coords = self.trainer.datamodule.train_coords[batch["index"].cpu().numpy()]
        out, terms = self._step(batch, coords)
        loss = torch.stack(list(terms.values())).sum()
        acc = (out["logits"].argmax(dim=1) == batch["label"]).float().mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=n)  # fmt: skip
        if len(terms) > 1:
            for name, value in terms.items():
                self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True,
                         sync_dist=True, batch_size=n)  # fmt: skip
        self.log("train/acc", acc, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        self.log("stage", float(self.stage), on_step=False, on_epoch=True, batch_size=n)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        y = batch["label"]
        n = len(y)
        self.log("val/bad_images", float(batch["n_bad"]), reduce_fx="sum", sync_dist=True,
                 batch_size=max(n, 1))  # fmt: skip
        if n == 0:
            return
        truth = self.trainer.datamodule.val_coords[batch["index"].cpu().numpy()]
        out, terms = self._step(batch, truth)
        logits = out["logits"].float()
        labeled = y >= 0  # images outside every kept cell: no loss, never a hit, but a distance
        if labeled.any():
            # the model's predictive distribution on the true cell (comparable across losses)
            loss = F.cross_entropy(logits[labeled], y[labeled])
            self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=int(labeled.sum()))
        self.log("val/train_loss", torch.stack(list(terms.values())).sum(), sync_dist=True,
                 batch_size=n)  # fmt: skip
        top = logits.topk(min(max(TOPK), logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        for k in TOPK:
            self.log(f"val/acc{k}", hits[:, :k].any(dim=1).float().mean(), prog_bar=k == 1,
                     sync_dist=True, batch_size=n)  # fmt: skip
        best = top[:, 0]
        if "offset" in out:  # the hybrid head's answer: the top cell's centroid + its offset
            offset = out["offset"][torch.arange(n, device=best.device), best].float()
            lat, lon = self.cells.points_at(best.cpu().numpy(), offset.cpu().numpy())
        else:
            lat, lon = self.centroids[best].cpu().numpy().T
        km = haversine_km(lat, lon, truth[:, 0], truth[:, 1])
        self.val_km.update(torch.as_tensor(km, dtype=torch.float64, device=self.device))

    def on_validation_epoch_end(self) -> None:
        if self.val_km.update_count:
            km = self.val_km.compute().cpu().numpy()  # gathered from every process
            self.log("val/median_km", float(np.median(km)), prog_bar=True)
            self.log("val/geoscore", float(np.mean(geoscore(km))))
        self.val_km.reset()

    # ---- optimization ----------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        cfg = self.config
        opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        if cfg.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"},
            }
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(int(cfg.warmup_epochs * total / cfg.epochs), total - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup)
        if warmup > 0:
            ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, total_iters=warmup)
            sched = torch.optim.lr_scheduler.SequentialLR(opt, [ramp, cosine], milestones=[warmup])
        else:
            sched = cosine
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_epoch_end(self) -> None:
        """Step ReduceLROnPlateau here, before this epoch's checkpoints are written.

        Lightning steps epoch schedulers after saving, and skips that step when it resumes from
        such a checkpoint, so a resumed run would lag one LR reduction behind the original.
        """
        loss = self.trainer.callback_metrics.get("val/loss")
        if self.config.scheduler == "plateau" and loss is not None:
            self.lr_schedulers().step(float(loss))

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()  # plateau is stepped in on_train_epoch_end

    # ---- checkpoints -----------------------------------------------------------------------
    def train_info(self) -> dict:
        """What a checkpoint records about this run: config, progress, metrics, data counts."""
        metrics = {
            k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")
        }
        return {
            "config": dataclasses.asdict(self.config),
            "epoch": int(self.trainer.current_epoch),
            "global_step": int(self.trainer.global_step),
            "stage": STAGES[self.stage] if self.stage >= 0 else None,
            "val": metrics,
            "data": self.data_info,
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make Lightning's .ckpt a self-contained geovit checkpoint (see geovit.checkpoint)."""
        checkpoint.update(
            contract_fields(
                self.model, self.cells, extra_cells=self.extra_cells, train=self.train_info()
            )
        )
        checkpoint["state_dict_prefix"] = "model."


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each .ckpt beside its target, then rename it over the old one (geovit.fileio).

    Lightning's own writer stages the file in TMPDIR and moves it, which across filesystems is
    a copy: a kill or a full disk mid-copy leaves a truncated checkpoint in place of the last
    good one and an orphan in /tmp.
    """

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options=None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


class StageSchedule(Callback):
    """Applies the stage of each epoch before its first batch (also right after a resume)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: GeoViTModule) -> None:
        stage = pl_module.config.stage(trainer.current_epoch)
        if stage != pl_module.stage:
            log.info("epoch %d: stage %s", trainer.current_epoch, STAGES[stage])
            pl_module.set_stage(stage)


class ReseedEachEpoch(Callback):
    """Seed torch/NumPy/random from (seed, epoch, rank) so no epoch depends on earlier ones."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)


class GeoDataModule(L.LightningDataModule):
    """Train/val datasets (dict samples, see geovit.data.images) + true coordinates of their rows
    (``train_coords``/``val_coords`` indexed by a sample's ``index``: losses and heads that know
    geography, and validation distances, read them).

    Samplers are always DistributedSampler (one replica on one device): shuffling depends only
    on (seed, epoch), identically for 1 or N processes.
    """

    def __init__(
        self,
        train_ds: Dataset,
        val_ds: Dataset,
        val_coords: np.ndarray,
        *,
        train_coords: np.ndarray,
        batch_size: int,
        workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, ds, coords in (("train", train_ds, train_coords), ("val", val_ds, val_coords)):
            if len(coords) != len(ds):
                raise GeovitError(f"{len(ds)} {name} images but {len(coords)} coordinates")
        self.train_ds, self.val_ds = train_ds, val_ds
        self.val_coords = np.asarray(val_coords, dtype=np.float64)
        self.train_coords = np.asarray(train_coords, dtype=np.float64)
        self.batch_size, self.workers, self.seed = batch_size, workers, seed

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(
            ds, num_replicas=world, rank=rank, shuffle=train, seed=self.seed
        )
        kwargs = dict(
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.workers,
            collate_fn=collate_skip_bad,
            pin_memory=torch.cuda.is_available(),
            # fresh workers each epoch: their seeds come from (seed, epoch, rank)
            persistent_workers=False,
        )
        if not train:
            return DataLoader(ds, **kwargs)
        # drop a last partial batch (no 1-image BatchNorm batches) unless it is the only one
        return EpochSeededLoader(
            ds,
            seed=self.seed,
            trainer=self.trainer,
            drop_last=len(sampler) > self.batch_size,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ds, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_ds, train=False)


@dataclass
class DataReport:
    """Which manifest rows a run uses; rows outside the kept cells are counted, not hidden."""

    n_train: int
    n_val: int
    n_train_outside: int  # excluded from training: no class to learn
    n_val_outside: int  # kept in validation: no loss, never a hit, but their distance counts
    n_other: int  # rows of other splits (test), untouched

    def lines(self) -> list[str]:
        return [
            f"train images: {self.n_train:,} ({self.n_train_outside:,} outside the kept cells, "
            "excluded)",
            f"val images:   {self.n_val:,} ({self.n_val_outside:,} outside the kept cells: counted "
            "as misses)",
            f"other rows:   {self.n_other:,} (test split, not used)",
        ]


def label_splits(
    manifest: pd.DataFrame, cells: CellPartition
) -> tuple[np.ndarray, np.ndarray, np.ndarray, DataReport]:
    """Cell labels of every row, the train rows to learn from, the val rows, and their counts."""
    split = manifest["split"].to_numpy()
    labels = cells.assign(manifest["latitude"].to_numpy(), manifest["longitude"].to_numpy())
    is_train, is_val = split == "train", split == "val"
    keep = is_train & (labels >= 0)
    report = DataReport(
        n_train=int(keep.sum()),
        n_val=int(is_val.sum()),
        n_train_outside=int((is_train & (labels < 0)).sum()),
        n_val_outside=int((is_val & (labels < 0)).sum()),
        n_other=int((~is_train & ~is_val).sum()),
    )
    if report.n_train == 0:
        raise GeovitError(
            "no training images fall inside the cells: build the cells from this manifest's "
            "train split (`geovit cells build`)"
        )
    if report.n_val == 0:
        raise GeovitError("the manifest has no 'val' rows: load it with a --val-fraction > 0")
    return labels, keep, is_val, report


def build_datamodule(
    manifest: pd.DataFrame,
    cells: CellPartition,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    config: TrainConfig,
) -> tuple[GeoDataModule, DataReport]:
    """Label the manifest's train/val rows with the cells and wrap them as image datasets."""
    labels, keep, is_val, report = label_splits(manifest, cells)
    images = manifest["image"].to_numpy(dtype=object)
    train_tf = build_transform(image_size, mean, std, train=True, hflip=config.hflip)
    val_tf = build_transform(image_size, mean, std, train=False)
    coords = manifest[["latitude", "longitude"]].to_numpy(dtype=np.float64)
    require_readable(images[keep], "train")
    require_readable(images[is_val], "val")
    dm = GeoDataModule(
        ImageDataset(images[keep], labels[keep], train_tf),
        ImageDataset(images[is_val], labels[is_val], val_tf),
        coords[is_val],
        train_coords=coords[keep],
        batch_size=config.batch_size,
        workers=config.workers,
        seed=config.seed,
    )
    return dm, report


@dataclass
class TrainResult:
    out_dir: Path
    best_ckpt: Path
    last_ckpt: Path
    model_path: Path
    best: dict = field(default_factory=dict)  # val metrics of the best epoch
    epochs: int = 0
    kept: dict = field(default_factory=dict)  # which epoch model.pt is, and why (see fit)
    interrupted: bool = False  # Ctrl-C or SIGTERM: the files hold the last complete epoch
    bad_images: dict = field(default_factory=dict)  # unreadable images of the last epoch


# what a run writes
RUN_FILES = ("best*.ckpt", "last*.ckpt", "model.pt", "logs", "tb", "config.yaml")


def prepare_run_folder(out: Path, *, resume: str | Path | None, overwrite: bool) -> None:
    """Refuse to write a new run over an old one (Lightning would add best-v1.ckpt beside the
    old files and model.pt would silently change); with `overwrite`, remove the old run's files
    (only those). Only the global-zero process checks: the others start while it writes."""
    out.mkdir(parents=True, exist_ok=True)
    if resume is not None or rank_zero_only.rank != 0 or not any(out.iterdir()):
        return
    previous = sorted({p for pattern in RUN_FILES for p in out.glob(pattern)})
    if not overwrite:
        names = ", ".join(p.name for p in previous) or ", ".join(sorted(os.listdir(out))[:5])
        raise GeovitError(
            f"run folder {out} is not empty ({names}): pass --resume {out / 'last.ckpt'} to "
            "continue that run, --overwrite to replace it, or another --out"
        )
    for p in previous:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def require_readable(refs: np.ndarray, split: str, n: int = 16) -> None:
    """Fail before training when a spread sample of a split's images is all unreadable (a
    wrong image folder), instead of a Lightning traceback after a whole epoch."""
    if len(refs) == 0:
        return
    sample = refs[np.unique(np.linspace(0, len(refs) - 1, min(n, len(refs))).astype(int))]
    first_error = ""
    for ref in sample:
        try:
            decode_image(read_image_bytes(ref))
            return
        except GeovitError as exc:
            first_error = first_error or str(exc)
    raise GeovitError(
        f"none of {len(sample)} sampled {split!r} images could be read (e.g. {first_error}); "
        "check the image paths"
    )


def fit(
    module: GeoViTModule,
    datamodule: GeoDataModule,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
) -> TrainResult:
    """Run Lightning: stages, best/last checkpoints, CSV + TensorBoard logs, then model.pt.

    Ctrl-C or SIGTERM stops at the next step (Lightning's handlers): nothing of the unfinished
    epoch is saved, model.pt is written from the best complete epoch and the result says
    ``interrupted`` (resume from last.ckpt).
    """
    cfg = module.config
    out = Path(out_dir)
    if resume is not None:
        _check_resumable(resume)
    prepare_run_folder(out, resume=resume, overwrite=overwrite)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    monitor = Monitor(cfg.monitor)
    ckpt_cb = ModelCheckpoint(
        dirpath=out, filename="best", monitor=monitor.value, mode=monitor.mode, save_top_k=1
    )
    # Lightning's save_last only refreshes last.ckpt when a new best is saved: keep our own
    last_cb = ModelCheckpoint(dirpath=out, filename="last", monitor=None, save_top_k=1)
    all_callbacks: list[Callback] = [
        ckpt_cb,
        last_cb,
        StageSchedule(),
        ReseedEachEpoch(cfg.seed),
        LearningRateMonitor(logging_interval="epoch"),
        *callbacks,
    ]
    if progress:
        all_callbacks.append(RichProgressBar())
    on_cpu = cfg.accelerator == "cpu" or not torch.cuda.is_available()
    trainer = L.Trainer(
        default_root_dir=out,
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        # frozen stages leave parameters without gradients: DDP must look for them
        strategy=DDPStrategy(find_unused_parameters=True) if cfg.distributed else "auto",
        precision=cfg.precision,
        gradient_clip_val=cfg.grad_clip,
        # adaptive_avg_pool2d's CUDA backward has no deterministic kernel: warn there
        deterministic=True if on_cpu else "warn",
        callbacks=all_callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=[CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tb")],
        enable_progress_bar=progress,
        use_distributed_sampler=False,
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
        log_every_n_steps=10,
    )
    with warnings.catch_warnings():
        # logs/ and tb/ live next to the checkpoints by design
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        interrupted = _fit_interruptible(trainer, module, datamodule, resume)
    best = Path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else out / "last.ckpt"
    model_path = out / "model.pt"
    metrics: dict = {}
    kept: dict = {}
    if trainer.is_global_zero and best.is_file():
        loaded = load_checkpoint(best)
        metrics = loaded.train.get("val", {})
        kept = {
            "epoch": loaded.train.get("epoch"),
            "monitor": monitor.value,
            "mode": monitor.mode,
            "value": metrics.get(monitor.value),
        }
        save_checkpoint(model_path, loaded, train={**loaded.train, "kept": kept})
    trainer.strategy.barrier()
    return TrainResult(
        out_dir=out,
        best_ckpt=best,
        last_ckpt=out / "last.ckpt",
        model_path=model_path,
        best=metrics,
        epochs=trainer.current_epoch,
        kept=kept,
        interrupted=interrupted,
        bad_images={
            k: int(v) for k, v in trainer.callback_metrics.items() if k.endswith("/bad_images")
        },
    )


def _fit_interruptible(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, resume
) -> bool:
    """trainer.fit; True when Ctrl-C or SIGTERM stopped it (Lightning turns both into a
    SystemExit after marking the run interrupted), False when it ran to the end."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    except SystemExit:
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        return True
    return False


def _check_resumable(path: str | Path) -> None:
    raw = read_raw(path, mmap=True)
    if "optimizer_states" not in raw or "loops" not in raw:
        raise GeovitError(
            f"{path} has no training state to resume from: pass the run's last.ckpt "
            "(model.pt holds weights only)"
        )


def weight_notes(module: GeoViTModule, config: TrainConfig) -> list[str]:
    """Each part's weight source, and a warning for each random part stage 0 would freeze."""
    reports = module.model.load_reports
    lines = [r.line() for r in reports.values()]
    if config.freeze_epochs > 0:
        frozen = [r for p, r in reports.items() if p not in TRAINABLE[0] and not r.pretrained]
        lines += [
            f"warning: stage 0 (epochs 0-{config.freeze_epochs - 1}) freezes {r.part} {r.name}, "
            "which has random weights: it learns nothing then (pass --freeze-epochs 0 to train "
            "it from the start, or give it pretrained weights)"
            for r in frozen
        ]
    return lines


def train(
    manifest: pd.DataFrame,
    cells: CellPartition,
    out_dir: str | Path,
    model_config: ModelConfig,
    config: TrainConfig,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    notify: Callable[[str], None] | None = None,
    build: Callable[..., tuple[L.LightningDataModule, DataReport]] = build_datamodule,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
    extra_cells: Sequence[CellPartition] = (),
) -> tuple[TrainResult, DataReport]:
    """Train GeoViT on a manifest's train split, validating on its val split each epoch.

    ``extra_cells``: coarser partitions to train at once (``model_config.extra_classes`` are
    their sizes); ``cells`` is the main (finest) one, the classes the model predicts.

    ``notify`` receives, before training, each part's weight source ("loaded N/M tensors")
    and warnings about the schedule (default: this module's logger, warnings as warnings).
    ``build`` makes the datamodule (build_datamodule's signature; geovit.streaming's for shards).
    """
    L.seed_everything(config.seed, workers=True, verbose=False)  # the initial weights too
    module = GeoViTModule(model_config, cells, config, extra_cells=extra_cells)
    if resume is None:  # a resumed run's weights come from its checkpoint
        for line in weight_notes(module, config):
            (notify or (log.warning if line.startswith("warning") else log.info))(line)
    mean, std = module.model.normalization
    dm, report = build(
        manifest, cells, image_size=model_config.image_size, mean=mean, std=std, config=config
    )
    module.data_info = dataclasses.asdict(report)
    result = fit(
        module, dm, out_dir, resume=resume, progress=progress, callbacks=callbacks,
        overwrite=overwrite,
    )  # fmt: skip
    return result, report


def resume_model(
    path: str | Path,
) -> tuple[ModelConfig, CellPartition, tuple[CellPartition, ...]]:
    """The model config, cells and coarser partitions of a run to resume (weights then come
    from the file)."""
    ckpt = load_checkpoint(path)
    return ckpt.config, ckpt.cells, ckpt.extra_cells


__all__ = [
    "PARTS",
    "STAGES",
    "TRAINABLE",
    "AtomicCheckpointIO",
    "DataReport",
    "GeoDataModule",
    "GeoViTModule",
    "ReseedEachEpoch",
    "StageSchedule",
    "TrainConfig",
    "TrainResult",
    "build_datamodule",
    "epoch_seed",
    "fit",
    "label_splits",
    "param_groups",
    "prepare_run_folder",
    "require_readable",
    "resume_model",
    "train",
    "weight_notes",
]
