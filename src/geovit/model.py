"""GeoViT: the design's hybrid classifier, assembled from timm backbones.

image -> CNN last stage (timm ``features_only``) -> adaptive average pool to the ViT's patch grid
-> flatten to tokens -> Linear(CNN channels -> ViT width) -> + the ViT's patch position embedding
-> the ViT's blocks and final norm -> mean over tokens -> dropout -> Linear to the K cells.

The ViT's patch embedding, class token and head are never used, so they are removed from the
module: every parameter in the state dict takes part in the forward pass (which DDP requires),
and the parameter count is the honest one. The class-token slot of the position embedding is
dropped for the same reason (the design mean-pools the patch tokens; there is no class token).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from geovit.errors import GeovitError
from geovit.net import hub_offline, require_host

PRESETS: dict[str, dict] = {
    # The design: ResNet50 + ViT-S/16 at 224 px (7x7 CNN map pooled to the 14x14 patch grid).
    "seed": {"cnn": "resnet50", "vit": "vit_small_patch16_224", "image_size": 224},
    # CPU demos and tests: ~6x fewer FLOPs per image than "seed" (8x8 token grid).
    "small": {"cnn": "resnet18", "vit": "vit_tiny_patch16_224", "image_size": 128},
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a GeoViT (stored in checkpoints as a plain dict)."""

    cnn: str
    vit: str
    image_size: int
    num_classes: int
    dropout: float = 0.2
    pretrained: bool = False
    cnn_weights: str | None = None
    vit_weights: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def model_config(preset: str, num_classes: int, **overrides) -> ModelConfig:
    """A preset's ModelConfig for ``num_classes`` cells, with fields overridden by keyword."""
    if preset not in PRESETS:
        raise GeovitError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise GeovitError(f"unknown model option(s) {unknown}: valid ones are {sorted(names)}")
    return ModelConfig(**{**PRESETS[preset], "num_classes": num_classes, **overrides})


def _require_download_host(name: str) -> None:
    """Fail in seconds when timm's weight host is unreachable (geovit.net.require_host).

    Skipped when the user runs the hub offline (HF_HUB_OFFLINE: timm then uses the local cache).
    """
    import huggingface_hub

    if hub_offline():
        return
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return  # unknown name or no weights: timm.create_model reports it
    url = huggingface_hub.constants.ENDPOINT if cfg.hf_hub_id else cfg.url
    host = urlparse(url or "").hostname
    if host is None:
        return
    require_host(
        host,
        f"download pretrained weights for {name}",
        "pass local files with --cnn-weights/--vit-weights, set HF_HUB_OFFLINE=1 to use weights "
        "already in the Hugging Face cache, or train from scratch with --no-pretrained",
    )


def _create(name: str, weights: str | None, pretrained: bool, **kwargs) -> nn.Module:
    """timm.create_model, failing at once with a GeovitError when asked-for weights are missing.

    A local file goes through timm's normal loader (``pretrained_cfg_overlay=dict(file=...)``),
    so its keys are filtered and the ViT position embedding is resampled exactly like a download.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise GeovitError(f"weights file {weights} for {name} not found: fix the path")
        # custom_load is timm's .npz reader; plain state dicts (.pth/.safetensors) must skip it
        kwargs["pretrained_cfg_overlay"] = {"file": str(path), "custom_load": path.suffix == ".npz"}
        pretrained = True
    elif pretrained:
        _require_download_host(name)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:
        if not timm.is_model(name):
            raise GeovitError(f"unknown timm model {name!r}: see timm.list_models()") from exc
        if not pretrained:
            raise
        source = weights or "the Hugging Face hub (timm's download)"
        raise GeovitError(
            f"could not load pretrained weights for {name} from {source} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass a local weights file "
            f"(--cnn-weights/--vit-weights) or train from scratch with --no-pretrained"
        ) from exc


class GeoViT(nn.Module):
    """CNN features -> ViT encoder -> mean pool -> linear classifier over the S2 cells."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.cnn = _create(
            config.cnn, config.cnn_weights, config.pretrained, features_only=True, out_indices=(-1,)
        )
        vit = _create(
            config.vit,
            config.vit_weights,
            config.pretrained,
            num_classes=0,
            img_size=config.image_size,
        )
        if vit.pos_embed is None:
            raise GeovitError(f"{config.vit} has no absolute position embedding: pick another ViT")
        self.grid = tuple(vit.patch_embed.grid_size)
        prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        vit.pos_embed = nn.Parameter(vit.pos_embed.detach()[:, prefix:].clone())
        vit.patch_embed = nn.Identity()
        vit.cls_token = None
        vit.reg_token = None
        vit.num_prefix_tokens = 0
        vit.has_class_token = False
        self.vit = vit
        self.pool = nn.AdaptiveAvgPool2d(self.grid)
        self.proj = nn.Linear(self.cnn.feature_info.channels()[-1], vit.embed_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(vit.embed_dim, config.num_classes)

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) the CNN was pretrained with: the input normalization for this model."""
        cfg = self.cnn.pretrained_cfg
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B,3,S,S), normalized -> logits (B,K)."""
        feats = self.pool(self.cnn(x)[-1])  # (B, C, gh, gw)
        tokens = self.proj(feats.flatten(2).transpose(1, 2))  # (B, gh*gw, D)
        tokens = self.vit.pos_drop(tokens + self.vit.pos_embed)
        tokens = self.vit.norm(self.vit.blocks(self.vit.norm_pre(tokens)))
        pooled = self.vit.fc_norm(tokens.mean(dim=1))
        return self.head(self.dropout(pooled))
