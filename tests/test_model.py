"""GeoViT: architecture, parameter count, weights loading, normalization, failures."""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed

from geovit.cells import CellPartition
from geovit.checkpoint import load_checkpoint, save_checkpoint
from geovit.errors import GeovitError
from geovit.model import ARCHS, PRESETS, GeoViT, ModelConfig, model_config

SIZE = 64


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_seed_preset_shape_and_parameter_count():
    k = 2199  # the design's number of cells
    torch.manual_seed(0)
    model = GeoViT(model_config("seed", k)).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, k)

    # Independent count: timm's full ResNet50 minus its 2048->1000 classifier, plus ViT-S/16
    # (width 384, depth 12, MLP ratio 4) blocks by formula: per block two LayerNorms (4D),
    # qkv (3D^2 + 3D), attention proj (D^2 + D), MLP (4D^2 + 4D + 4D^2 + D) = 12D^2 + 13D.
    d, depth, tokens = 384, 12, 14 * 14
    resnet50 = n_params(timm.create_model("resnet50")) - (2048 * 1000 + 1000)
    vit = depth * (12 * d * d + 13 * d) + 2 * d + tokens * d  # blocks, final norm, pos_embed
    proj, head = 2048 * d + d, d * k + k
    assert n_params(model) == resnet50 + vit + proj + head
    assert round(n_params(model) / 1e6, 1) == 46.5  # the "46.5M parameters"
    assert model.vit.pos_embed.shape == (1, tokens, d)


def test_small_preset_token_grid_and_no_unused_parameters():
    model = GeoViT(model_config("small", 7, image_size=SIZE))
    assert model.grid == (SIZE // 16, SIZE // 16)
    assert model.vit.pos_embed.shape == (1, 16, 192)
    model(torch.randn(2, 3, SIZE, SIZE)).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # DDP needs every parameter in the graph
    names = dict(model.named_parameters())
    assert not any(n.startswith(("vit.patch_embed", "vit.cls_token", "vit.head")) for n in names)


def test_forward_matches_timm_vit_pipeline():
    """Our token path equals timm's own ViT forward (pos add, blocks, norm, avg pool)."""
    torch.manual_seed(0)
    model = GeoViT(model_config("small", 5, image_size=SIZE)).eval()
    ref = timm.create_model(
        "vit_tiny_patch16_224",
        num_classes=0,
        img_size=SIZE,
        class_token=False,
        global_pool="avg",
        fc_norm=False,
    ).eval()
    missing, unexpected = ref.load_state_dict(model.vit.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("patch_embed") for k in missing)

    class CnnTokens(torch.nn.Module):  # replaces the patch embedding with our CNN tokens
        def forward(self, x):
            return model.proj(model.pool(model.cnn(x)[-1]).flatten(2).transpose(1, 2))

    ref.patch_embed = CnnTokens()
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model.head(ref.forward_head(ref.forward_features(x), pre_logits=True))
        torch.testing.assert_close(model(x), expected)


def test_pool_resamples_cnn_map_to_vit_grid():
    model = GeoViT(model_config("seed", 3)).eval()
    feats = model.cnn(torch.randn(1, 3, 224, 224))[-1]
    assert feats.shape == (1, 2048, 7, 7)
    pooled = model.pool(feats)
    assert pooled.shape[-2:] == (14, 14)
    # adaptive average pooling from 7 to 14 repeats each CNN cell into a 2x2 block
    torch.testing.assert_close(pooled, feats.repeat_interleave(2, -1).repeat_interleave(2, -2))


def test_local_weight_files_load_exactly(tmp_path):
    torch.manual_seed(1)
    cnn_src = timm.create_model("resnet18")
    vit_src = timm.create_model("vit_tiny_patch16_224")
    torch.save(cnn_src.state_dict(), tmp_path / "cnn.pth")
    safetensors.torch.save_file(vit_src.state_dict(), tmp_path / "vit.safetensors")
    cfg = model_config(
        "small",
        4,
        image_size=SIZE,
        cnn_weights=str(tmp_path / "cnn.pth"),
        vit_weights=str(tmp_path / "vit.safetensors"),
    )
    model = GeoViT(cfg)
    src = cnn_src.state_dict()
    for name, value in model.cnn.state_dict().items():
        torch.testing.assert_close(value, src[name], rtol=0, atol=0)
    src = vit_src.state_dict()
    for name, value in model.vit.state_dict().items():
        if name != "pos_embed":
            torch.testing.assert_close(value, src[name], rtol=0, atol=0)
    # 14x14 position embedding resampled to the 4x4 grid the way timm does; class slot dropped
    expected = resample_abs_pos_embed(src["pos_embed"], (4, 4), num_prefix_tokens=1)[:, 1:]
    torch.testing.assert_close(model.vit.pos_embed, expected)
    # without the files: different (random) weights
    scratch = GeoViT(dataclasses.replace(cfg, cnn_weights=None, vit_weights=None))
    assert not torch.equal(scratch.cnn.conv1.weight, model.cnn.conv1.weight)


def test_wrong_or_missing_weight_files_fail_clearly(tmp_path):
    with pytest.raises(GeovitError, match="not found"):
        GeoViT(model_config("small", 3, cnn_weights=str(tmp_path / "nope.pth")))
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(GeovitError, match=r"does not fit cnn resnet50: .*--no-pretrained-cnn"):
        GeoViT(model_config("seed", 3, cnn_weights=str(tmp_path / "r18.pth")))


def test_unreachable_hub_fails_at_once(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(GeovitError, match=r"huggingface\.co.*--no-pretrained"):
        GeoViT(model_config("small", 3, pretrained=True))


def test_normalization_comes_from_the_cnn_pretrained_config():
    model = GeoViT(model_config("small", 3, image_size=SIZE))
    mean, std = model.normalization
    assert mean == pytest.approx(timm.data.IMAGENET_DEFAULT_MEAN)
    assert std == pytest.approx(timm.data.IMAGENET_DEFAULT_STD)
    # the ViT's own (0.5) normalization is not used: the CNN sees the pixels
    assert timm.create_model("vit_tiny_patch16_224").pretrained_cfg["mean"] != mean


def test_model_config_presets_and_validation():
    cfg = model_config("seed", 10)
    assert (cfg.cnn, cfg.vit, cfg.image_size, cfg.dropout) == (
        "resnet50",
        "vit_small_patch16_224",
        224,
        0.2,
    )
    assert set(PRESETS) >= {"seed", "small"}
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(GeovitError, match="unknown preset"):
        model_config("huge", 10)
    with pytest.raises(GeovitError, match="unknown model option"):
        model_config("seed", 10, depth=3)
    with pytest.raises(GeovitError, match="unknown timm model"):
        GeoViT(model_config("small", 3, cnn="resnet_nonexistent"))


# (arch, cnn, vit, size): the design's small pair; a patch-14 DINOv2 ViT (other grid, own
# normalization) behind a CNN whose last stage has stride 64; each baseline alone
ARCH_CASES = [
    ("hybrid", "resnet18", "vit_tiny_patch16_224", SIZE),
    ("hybrid", "efficientvit_m0", "vit_small_patch14_dinov2", 56),
    ("cnn", "resnet18", "vit_tiny_patch16_224", SIZE),
    ("vit", "resnet18", "vit_small_patch14_dinov2", 56),
]


@pytest.mark.parametrize(("arch", "cnn", "vit", "size"), ARCH_CASES)
def test_every_arch_trains_all_its_parameters_and_round_trips(arch, cnn, vit, size, tmp_path):
    k = 4
    torch.manual_seed(0)
    model = GeoViT(model_config("small", k, arch=arch, cnn=cnn, vit=vit, image_size=size))
    x = torch.randn(2, 3, size, size)
    logits = model(x)
    assert logits.shape == (2, k)
    logits.sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert {p for p in ("cnn", "vit") if getattr(model, p) is not None} == set(model.config.parts)
    seer = cnn if arch in ("hybrid", "cnn") else vit  # the part that sees the pixels
    cfg = timm.create_model(seer).pretrained_cfg
    assert model.normalization == (tuple(cfg["mean"]), tuple(cfg["std"]))
    if arch == "hybrid":
        patch = timm.create_model(vit).patch_embed.patch_size[0]
        assert model.grid == (size // patch, size // patch)
        assert model.vit.pos_embed.shape[1] == (size // patch) ** 2
    cells = CellPartition.build(
        np.array([10.0, 20.0, 30.0, 40.0] * 10), np.array([0.0, 10.0, 20.0, 30.0] * 10),
        t1=10, t2=1,
    )  # fmt: skip
    assert len(cells) == k
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model.eval(), cells))
    assert loaded.config.arch == arch and (loaded.mean, loaded.std) == model.normalization
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)


def test_cnn_arch_is_timms_classifier():
    """cnn alone = timm's own classifier: global average pool -> (dropout) -> linear."""
    torch.manual_seed(0)
    model = GeoViT(model_config("small", 6, arch="cnn", image_size=SIZE)).eval()
    ref = timm.create_model("resnet18", num_classes=6).eval()
    ref.load_state_dict({**model.cnn.state_dict(), "fc.weight": model.head.weight,
                         "fc.bias": model.head.bias})  # fmt: skip
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_vit_arch_is_timms_mean_pooled_vit():
    """vit alone = timm's ViT with its patch embedding, mean over patch tokens, linear head."""
    torch.manual_seed(0)
    name = "vit_small_patch14_dinov2"
    model = GeoViT(model_config("small", 6, arch="vit", vit=name, image_size=56)).eval()
    ref = timm.create_model(name, num_classes=6, img_size=56, global_pool="avg", fc_norm=False)
    state = {**model.vit.state_dict(), "head.weight": model.head.weight,
             "head.bias": model.head.bias}  # fmt: skip
    ref.load_state_dict(state)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.eval()(x))
    assert model.vit.patch_embed.patch_size == (14, 14)


def test_patch14_position_embedding_resampled_to_the_token_grid(tmp_path):
    """A DINOv2 file at a 5x5 grid loads into the 4x4 grid of a 56 px input the way timm does."""
    torch.manual_seed(2)
    name = "vit_small_patch14_dinov2"
    src = timm.create_model(name, img_size=70).state_dict()
    safetensors.torch.save_file(src, tmp_path / "vit.safetensors")
    model = GeoViT(model_config("small", 3, vit=name, image_size=56,
                                vit_weights=str(tmp_path / "vit.safetensors")))  # fmt: skip
    expected = resample_abs_pos_embed(src["pos_embed"], (4, 4), num_prefix_tokens=1)[:, 1:]
    torch.testing.assert_close(model.vit.pos_embed, expected)
    report = model.load_reports["vit"]
    assert report.loaded == report.total and "cls_token" not in dict(model.named_parameters())


def test_unknown_arch_fails_clearly():
    assert ARCHS == ("hybrid", "cnn", "vit")
    with pytest.raises(GeovitError, match="unknown arch 'resnet'"):
        GeoViT(model_config("small", 3, arch="resnet"))
