"""Occlusion heatmaps: against a model with a known answer, against captum, fast vs fp32."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import Occlusion
from PIL import Image
from typer.testing import CliRunner

from geovit.cells import CellPartition
from geovit.cli import app
from geovit.errors import GeovitError
from geovit.explain import (
    Explanation,
    explain_image,
    occlusion,
    occlusion_window,
    parse_fill,
    probability_fn,
    render_explanation,
    window_starts,
)
from geovit.model import GeoViT, model_config
from geovit.predictor import Predictor

matplotlib.use("Agg")

REGION = (slice(20, 36), slice(40, 60))  # rows, cols the RegionModel looks at


class RegionModel(torch.nn.Module):
    """Logit of class 0 = 4 * mean of the image over REGION; class 1 = 0: p(0) depends only on
    that region, so occlusion must light up there and nowhere else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 4 * x[:, :, REGION[0], REGION[1]].mean(dim=(1, 2, 3))
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def small_cnn(num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(256, num_classes),
    ).eval()


def test_heatmap_peaks_at_the_region_the_model_uses():
    image = torch.rand(3, 80, 96) + 0.5  # positive everywhere: occluding with 0 lowers logit 0
    heat = occlusion(probability_fn(RegionModel()), image, 0, patch=12, stride=4)
    assert heat.shape == (80, 96)
    iy, ix = np.unravel_index(int(heat.argmax()), heat.shape)
    assert REGION[0].start <= iy < REGION[0].stop and REGION[1].start <= ix < REGION[1].stop
    assert heat[REGION].min() > 0
    # Pixels whose every covering window misses the region get exactly zero.
    ys, xs = window_starts(80, 12, 4), window_starts(96, 12, 4)
    touch_y = {y for y in ys if y < REGION[0].stop and y + 12 > REGION[0].start}
    touch_x = {x for x in xs if x < REGION[1].stop and x + 12 > REGION[1].start}
    far = np.ones((80, 96), bool)
    for y in touch_y:
        for x in touch_x:
            far[y : y + 12, x : x + 12] = False
    assert far.any() and np.all(heat.numpy()[far] == 0)


@pytest.mark.parametrize(
    ("shape", "patch", "stride", "fill"),
    [((64, 64), 16, 8, None), ((70, 53), 16, 5, (0.3, -1.0, 2.0))],
)
def test_equals_captum_occlusion(shape, patch, stride, fill):
    torch.manual_seed(1)
    image = torch.randn(3, *shape)
    fn = probability_fn(small_cnn())
    target = 3
    ours = occlusion(fn, image, target, patch=patch, stride=stride, fill=fill, batch_size=7)
    base = torch.zeros(1, 3, *shape) if fill is None else torch.tensor(fill).view(1, 3, 1, 1)
    ref = Occlusion(fn).attribute(
        image[None],
        sliding_window_shapes=(3, patch, patch),
        strides=(3, stride, stride),
        baselines=base.expand(1, 3, *shape).contiguous(),
        target=target,
        perturbations_per_eval=16,
    )[0]
    assert torch.allclose(ref[0], ref[2])  # the window spans all channels
    assert ours.abs().max() > 1e-4  # a real signal, not all zeros
    torch.testing.assert_close(ours, ref[0], rtol=0, atol=1e-6)


def test_window_grid_matches_captum_rule():
    for size, patch, stride in [(224, 32, 8), (128, 32, 8), (53, 16, 5), (16, 16, 3)]:
        starts = window_starts(size, patch, stride)
        assert len(starts) == math.ceil((size - patch) / stride) + 1
        assert starts[-1] + patch >= size  # every pixel covered
    with pytest.raises(GeovitError):
        window_starts(32, 48, 8)
    with pytest.raises(GeovitError):
        window_starts(64, 8, 16)


def test_fast_mode_correlates_with_fp32():
    torch.manual_seed(0)
    model = GeoViT(model_config("small", 10, image_size=64)).eval()
    image = torch.randn(3, 64, 64)
    fn = probability_fn(model)
    with torch.inference_mode():
        target = int(fn(image[None])[0].argmax())
    slow = occlusion(fn, image, target, patch=16, stride=8)
    for modules, min_r in ((None, 0.99), ([model.cnn], 0.999)):  # all bf16 / CNN only
        fast = occlusion(fn, image, target, patch=16, stride=8, fast=True, bf16_modules=modules)
        assert fast.dtype == torch.float32
        r = np.corrcoef(slow.flatten().numpy(), fast.flatten().numpy())[0, 1]
        assert r >= min_r, (modules is None, r)
        assert not torch.equal(slow, fast)  # bf16 really ran


def test_parse_fill():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    assert parse_fill("mean", mean, std) is None
    got = parse_fill("255,0,51", mean, std)
    torch.testing.assert_close(
        got, torch.tensor([(1 - 0.5) / 0.2, (0 - 0.4) / 0.25, (0.2 - 0.3) / 0.5])
    )
    for bad in ("1,2", "red", "0,0,300"):
        with pytest.raises(GeovitError):
            parse_fill(bad, mean, std)


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu")


def test_explain_image_and_render(predictor, tmp_path):
    photo = tmp_path / "p.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), np.uint8)).save(photo)
    lat, lon = predictor.cells.centroid_lat[0], predictor.cells.centroid_lon[0]
    expl = explain_image(predictor, photo, lat=lat, lon=lon, patch=16, stride=8)
    assert expl.target_kind == "true"
    assert expl.target == int(predictor.cells.assign(np.array([lat]), np.array([lon]))[0])
    assert expl.token == predictor.cells.tokens[expl.target]
    assert expl.heatmap.shape == (64, 64) and expl.photo.shape == (60, 90, 3)
    probs = predictor.predict_proba(predictor.preprocess(photo)[None])[0]
    assert expl.prob == pytest.approx(float(probs[expl.target]), rel=1e-6)
    top = explain_image(predictor, photo, patch=16, stride=8)
    assert top.target_kind == "top" and top.target == int(probs.argmax())
    fig = render_explanation(expl, tmp_path / "out" / "heat.png")
    assert expl.token in fig._suptitle.get_text()
    png = tmp_path / "out" / "heat.png"
    assert png.stat().st_size > 20_000
    assert Image.open(png).size[0] > 500
    with pytest.raises(GeovitError, match="--lat"):
        explain_image(predictor, photo, target="true")
    with pytest.raises(GeovitError, match="no cell"):
        explain_image(predictor, photo, lat=-40.0, lon=20.0)


def test_baseline_archs_explain_like_captum(baseline_checkpoint, tmp_path):
    """CNN-only and ViT-only checkpoints: the heatmap is captum's, and --fast runs on each."""
    predictor = Predictor.from_checkpoint(baseline_checkpoint, device="cpu")
    photo = tmp_path / "p.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(photo)
    expl = explain_image(predictor, photo, patch=16, stride=16)
    x = predictor.preprocess(photo)
    ref = Occlusion(predictor.predict_proba).attribute(
        x[None], sliding_window_shapes=(3, 16, 16), strides=(3, 16, 16),
        baselines=torch.zeros(1, 3, 64, 64), target=expl.top,
    )[0, 0]  # fmt: skip
    assert np.abs(expl.heatmap).max() > 1e-6
    np.testing.assert_allclose(expl.heatmap, ref.numpy(), rtol=0, atol=1e-6)
    fast = explain_image(predictor, photo, patch=16, stride=16, fast=True)
    assert fast.heatmap.shape == (64, 64) and np.isfinite(fast.heatmap).all()


def test_explain_cli(tiny_checkpoint, tiny_world, tmp_path):
    photo = sorted((tiny_world / "images" / "test").glob("*.jpg"))[0]
    runner = CliRunner()
    args = ["explain", str(photo), "-c", str(tiny_checkpoint), "-o", str(tmp_path), "--patch", "16"]
    res = runner.invoke(app, [*args, "--target", "top", "--fill", "0,0,0", "--fast"])
    assert res.exit_code == 0, res.output
    png = tmp_path / f"{photo.stem}_occlusion.png"
    assert png.stat().st_size > 20_000 and "top cell" in res.output
    for bad in (["--lat", "40"], ["--fill", "1,2"], ["--stride", "40"]):
        res = runner.invoke(app, [*args, *bad])
        assert res.exit_code == 2, (bad, res.output)
        assert "error:" in res.output
    # --target is a closed choice: click refuses a typo naming the valid values
    res = runner.invoke(app, [*args, "--target", "best"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "'true', 'top'" in res.output


def test_explain_cli_takes_the_true_location_from_the_manifest(
    tiny_checkpoint, tiny_world, tiny_cells, tmp_path
):
    test = pd.read_csv(tiny_world / "test.csv", dtype={"id": str})
    cells = CellPartition.load(tiny_cells)
    inside = test[cells.assign(test["latitude"].to_numpy(), test["longitude"].to_numpy()) >= 0]
    row = inside.iloc[0]
    photo = tiny_world / "images" / "test" / f"{row['id']}.jpg"
    args = ["explain", str(photo), "-c", str(tiny_checkpoint), "-o", str(tmp_path)]
    res = CliRunner().invoke(app, [*args, "--patch", "16", "--stride", "16", "-d", str(tiny_world)])
    assert res.exit_code == 0, res.output
    true_cell = cells.tokens[
        cells.assign(np.array([row["latitude"]]), np.array([row["longitude"]]))[0]
    ]
    assert res.output.startswith(f"true cell {true_cell}")
    stray = tmp_path / "stray.jpg"
    stray.write_bytes(photo.read_bytes())
    res = CliRunner().invoke(app, ["explain", str(stray), "-c", str(tiny_checkpoint), "-o",
                                   str(tmp_path), "-d", str(tiny_world)])  # fmt: skip
    assert res.exit_code == 2 and "not in the manifest" in res.output


def test_occlusion_window_scales_with_the_model_input():
    assert occlusion_window(224) == (32, 8)  # the design's own window
    assert occlusion_window(64) == (9, 2)  # 32 * 64 / 224 = 9.1, 8 * 64 / 224 = 2.3
    assert occlusion_window(448) == (64, 16)


def test_explain_default_patch_is_scaled_to_the_input(predictor, tmp_path):
    photo = tmp_path / "p.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), np.uint8)).save(photo)
    expl = explain_image(predictor, photo, stride=8)  # patch: 9 px at this 64 px model
    x = predictor.preprocess(photo)
    ref = occlusion(predictor.predict_proba, x, expl.target, patch=9, stride=8)
    np.testing.assert_allclose(expl.heatmap, ref.numpy(), rtol=1e-5, atol=1e-7)


def test_heatmap_figure_is_diverging_centred_at_zero_with_its_range_stated():
    """A +-0.0002 heatmap is drawn at full colour: red where positive, white at 0, blue where
    negative, over a grey photo; the colour bar states the range."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    heat = np.zeros((64, 64), np.float32)
    heat[:, :16], heat[:, -16:] = 2e-4, -2e-4
    photo = np.full((64, 64, 3), 128, np.uint8)
    expl = Explanation(heat, photo, 0, "top", "89c", "", 0.5, 0, 0.5)
    fig = render_explanation(expl)
    im = fig.axes[1].images[1]
    assert (im.norm.vmin, im.norm.vcenter, im.norm.vmax) == pytest.approx((-2e-4, 0.0, 2e-4))
    assert "range ±0.0002" in fig.axes[2].get_ylabel()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    img = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    ax = fig.axes[1]

    def at(x: float) -> np.ndarray:
        px, py = ax.transData.transform((x, 32))
        return img[int(img.shape[0] - py), int(px)]

    # Reference: the colour map's end and centre colours at alpha 0.75 over the grey photo.
    def blend(t: float) -> np.ndarray:
        return 0.75 * np.array(colormaps["RdBu_r"](t)[:3]) * 255 + 0.25 * 128

    for x, t in ((4, 1.0), (32, 0.5), (60, 0.0)):  # +max: dark red, 0: white, -max: dark blue
        np.testing.assert_allclose(at(x), blend(t), atol=6)
