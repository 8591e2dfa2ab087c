"""The demo's settings: a CPU-sized run of every stage, and its stage schedule.

Free of torch so `geovit demo --help` shows these defaults without importing the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from geovit.errors import GeovitError


@dataclass
class DemoSettings:
    n: int = 6000
    seed: int = 0
    image_size: int = 48  # model input (px): the small preset shrunk for a 2-core CPU
    world_size: tuple[int, int] = (144, 96)  # synthetic photo size, 3:2
    target_classes: int = 40
    preset: str = "small"  # backbones (at image_size); "lite" needs geovit[lite] for its weights
    epochs: int = 6
    freeze_epochs: int = 1
    cnn_refreeze_epoch: int = 5
    batch_size: int = 64
    lr: float = 1e-3  # random init learns faster with a larger step than fine-tuning's 1e-4
    workers: int = 0  # decoding 144x96 JPEGs in the main process: workers would fight the 2 cores
    n_explain: int = 3
    occlusion_patch: int = 8  # the design's 32/8 at 224 px, scaled to the demo's input size
    occlusion_stride: int = 2


def stage_boundaries(epochs: int) -> tuple[int, int]:
    """(freeze_epochs, cnn_refreeze_epoch) for a run of `epochs`, in the design's proportions
    (3 of 23 epochs heads only, 3 of 23 with the CNN frozen again), at least one epoch each
    when there are three or more."""
    if epochs < 1:
        raise GeovitError(f"--epochs {epochs} must be at least 1")
    edge = max(1, round(epochs * 3 / 23)) if epochs >= 3 else 0
    return edge, epochs - edge
