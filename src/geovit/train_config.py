"""The hyper-parameters of a training run: what `geovit train` offers, with their defaults.

Free of torch so the CLI builds its options (and `--help`) from these fields without importing the
trainer; `geovit.training` runs them. A new field becomes a `geovit train` flag by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from geovit.errors import GeovitError
from geovit.geo import DEFAULT_TAU_KM
from geovit.monitor import Monitor, parse_monitor

STAGES = ("heads", "full", "vit")
SCHEDULERS = ("plateau", "cosine")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")


@dataclass
class TrainConfig:
    """Hyper-parameters of a run (stored in every checkpoint under ``train["config"]``)."""

    epochs: int = 23
    freeze_epochs: int = 3  # stage 1 ("full") starts here
    cnn_refreeze_epoch: int = 20  # stage 2 ("vit") starts here
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.05
    scheduler: str = "plateau"
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    warmup_epochs: float = 1.0  # cosine only
    label_smoothing: float = 0.0  # "ce" only
    # the classification loss (geovit.losses.LOSSES) and, for "haversine", its temperature (km)
    loss: str = "ce"
    tau: float = DEFAULT_TAU_KM
    # the hybrid head's offset regression: loss = classification + offset_weight * L1/L2
    offset_weight: float = 1.0
    offset_loss: str = "l1"
    grad_clip: float | None = 1.0
    precision: str = "32"
    channels_last: bool = False
    hflip: bool = False
    workers: int = 4
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    seed: int = 0
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    # The metric whose best epoch becomes model.pt: the one default, chosen by measurement on
    # real photos (bench/RESULTS.md, Im2GPS3k): val/acc1 ties on small val splits and kept the
    # worse epoch of the CNN-only run; val/geoscore is continuous and kept the best test epoch.
    monitor: str = Monitor.geoscore.value

    def __post_init__(self) -> None:
        self.monitor = parse_monitor(self.monitor).value  # a plain str: checkpoints hold no Enum
        if not 0 <= self.freeze_epochs <= self.cnn_refreeze_epoch:
            raise GeovitError(
                f"stage boundaries freeze_epochs={self.freeze_epochs}, cnn_refreeze_epoch="
                f"{self.cnn_refreeze_epoch} must satisfy 0 <= freeze_epochs <= cnn_refreeze_epoch"
            )
        if self.scheduler not in SCHEDULERS:
            raise GeovitError(f"unknown scheduler {self.scheduler!r}: use one of {SCHEDULERS}")
        # the registries live with their torch code: imported here, not when the CLI lists flags
        from geovit.heads import OFFSET_LOSSES
        from geovit.losses import LOSSES

        if self.loss not in LOSSES:
            raise GeovitError(f"unknown loss {self.loss!r}: use one of {tuple(LOSSES)}")
        if self.offset_loss not in OFFSET_LOSSES:
            raise GeovitError(
                f"unknown offset loss {self.offset_loss!r}: use one of {OFFSET_LOSSES}"
            )
        if not self.offset_weight >= 0:
            raise GeovitError(f"offset weight {self.offset_weight} must be >= 0")
        if self.precision not in PRECISIONS:
            raise GeovitError(f"unknown precision {self.precision!r}: use one of {PRECISIONS}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise GeovitError("epochs and batch size must be >= 1 and lr > 0")

    def stage_spans(self) -> list[tuple[str, int, int]]:
        """(stage, first epoch, last epoch) of each stage that runs within `epochs`."""
        bounds = (0, min(self.freeze_epochs, self.epochs),
                  min(self.cnn_refreeze_epoch, self.epochs), self.epochs)  # fmt: skip
        return [
            (STAGES[i], bounds[i], bounds[i + 1] - 1)
            for i in range(len(STAGES))
            if bounds[i + 1] > bounds[i]
        ]

    def stage_warning(self) -> str | None:
        """A sentence naming the stages that will run when --epochs cuts the schedule short (e.g.
        --epochs 2 with --freeze-epochs 3 trains the heads only); None when all three run."""
        spans = self.stage_spans()
        if len(spans) == len(STAGES):
            return None
        runs = ", ".join(f"{name} (epochs {a}-{b})" for name, a, b in spans)
        missing = [name for name in STAGES if name not in {n for n, _, _ in spans}]
        return (
            f"with --epochs {self.epochs}, --freeze-epochs {self.freeze_epochs} and "
            f"--cnn-refreeze-epoch {self.cnn_refreeze_epoch} only these stages run: {runs}; "
            f"skipped: {', '.join(missing)}. Lower the stage epochs to run them"
        )

    def stage(self, epoch: int) -> int:
        """The stage (0, 1, 2) an epoch belongs to."""
        return int(epoch >= self.freeze_epochs) + int(epoch >= self.cnn_refreeze_epoch)

    @property
    def distributed(self) -> bool:
        return not (str(self.devices) == "1" and self.num_nodes == 1)
