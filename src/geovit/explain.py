"""Occlusion sensitivity: which parts of a photo the model's answer depends on.

A patch of the dataset's mean colour slides over the model input; at each position the drop in
the target cell's probability is recorded, and every pixel gets the mean drop of the windows that
cover it. The window grid and the averaging are captum's `Occlusion` (windows clipped at the
border, attribution = baseline output - occluded output), so heatmaps compare one to one with it.

The engine is a short vectorized implementation: one broadcast `torch.where` over per-position
masks builds a chunk of occluded copies, which run in batches under `torch.inference_mode`; the
per-pixel average is two (H,P)@(P,W) products. Its fp32 heatmaps equal captum's exactly (tested).
In fp32 on CPU it is no faster than captum (the forward passes dominate both; see
bench/occlusion.py); what it adds is `fast=True`: channels_last and bf16 autocast, for GeoViT in
the CNN only (`bf16_modules`), which keeps the heatmap at r > 0.999 with fp32.

Explanation methods are registered by name (:data:`EXPLAINERS`, :func:`register_explainer`):
``explain_image(..., method=NAME, **options)`` runs one, its options checked first.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from geovit.errors import GeovitError

if TYPE_CHECKING:
    from geovit.predictor import Predictor

ModelFn = Callable[[torch.Tensor], Any]
"""Maps a float batch (B,3,H,W) to class probabilities (B,K) (a tensor or an array)."""


# The design's occlusion at its 224 px input: a 32 px patch every 8 px. Smaller inputs get the
# same fractions (a fixed 32 px patch would cover half of a 64 px input: a blocky heatmap).
DESIGN_INPUT, DESIGN_PATCH, DESIGN_STRIDE = 224, 32, 8


def occlusion_window(image_size: int) -> tuple[int, int]:
    """(patch, stride) in pixels for a model input of `image_size`: the design's 32/224 and
    8/224 of the input."""
    patch = max(2, round(DESIGN_PATCH * image_size / DESIGN_INPUT))
    return patch, max(1, round(DESIGN_STRIDE * image_size / DESIGN_INPUT))


def window_starts(size: int, patch: int, stride: int) -> np.ndarray:
    """Start offsets of the occluding window along one axis, exactly as captum places them.

    captum takes ceil((size - patch) / stride) + 1 steps, so the last window may stick out past
    the border (it is clipped there) and every pixel is covered at least once.
    """
    if not 0 < patch <= size:
        raise GeovitError(f"occlusion patch {patch} px must be between 1 and the image size {size}")
    if stride < 1 or (stride > patch and patch < size):
        raise GeovitError(f"occlusion stride {stride} must be between 1 and the patch size {patch}")
    return stride * np.arange(math.ceil((size - patch) / stride) + 1)


def _axis_masks(size: int, starts: torch.Tensor, patch: int) -> torch.Tensor:
    """(n, size) bool: pixel i of the axis lies in window n."""
    idx = torch.arange(size, device=starts.device)
    return (idx[None, :] >= starts[:, None]) & (idx[None, :] < starts[:, None] + patch)


def occlusion(
    model_fn: ModelFn,
    image: torch.Tensor,
    target: int,
    *,
    patch: int = 32,
    stride: int = 8,
    fill: torch.Tensor | Sequence[float] | None = None,
    batch_size: int = 32,
    fast: bool = False,
    bf16_modules: Sequence[torch.nn.Module] | None = None,
) -> torch.Tensor:
    """Per-pixel occlusion heatmap (H, W) float32 of `image` (3,H,W, model-normalized).

    Value = mean over the windows covering the pixel of p(target | image) - p(target | occluded).
    `fill` is the occluder's colour in normalized units (default zeros = the dataset mean colour).
    `fast` feeds channels_last inputs and runs bf16 autocast: around the whole `model_fn`, or
    only inside `bf16_modules` when given (the rest stays fp32; see `bf16_only`).
    """
    if image.ndim != 3:
        raise GeovitError(f"occlusion expects one image (3,H,W), got shape {tuple(image.shape)}")
    _, h, w = image.shape
    dev = image.device
    ys = torch.as_tensor(window_starts(h, patch, stride), device=dev)
    xs = torch.as_tensor(window_starts(w, patch, stride), device=dev)
    fill_t = torch.zeros(3) if fill is None else torch.as_tensor(fill, dtype=torch.float32)
    fill_t = fill_t.to(dev, image.dtype).reshape(3, 1, 1)
    rows = _axis_masks(h, ys, patch)  # (ny, H)
    cols = _axis_masks(w, xs, patch)  # (nx, W)
    # Position p = (iy, ix) with iy fastest, captum's order (it does not matter for the result).
    pos_rows = rows.repeat(len(xs), 1)  # (P, H)
    pos_cols = cols.repeat_interleave(len(ys), 0)  # (P, W)

    def probs_of(batch: torch.Tensor) -> torch.Tensor:
        if not fast:
            out = model_fn(batch)
        else:
            ctx = (
                bf16_only(bf16_modules)
                if bf16_modules
                else torch.autocast(dev.type, torch.bfloat16)
            )
            with ctx:
                out = model_fn(batch.contiguous(memory_format=torch.channels_last))
        return torch.as_tensor(out, device=dev)[:, target].float()

    drops = torch.empty(len(pos_rows), dtype=torch.float32, device=dev)
    with torch.inference_mode():
        base = probs_of(image[None])[0]
        for s in range(0, len(pos_rows), batch_size):
            r, c = pos_rows[s : s + batch_size], pos_cols[s : s + batch_size]
            mask = (r[:, :, None] & c[:, None, :])[:, None]  # (n,1,H,W)
            drops[s : s + len(r)] = base - probs_of(torch.where(mask, fill_t, image[None]))
        # Sum of drops and count of windows per pixel as (H,P)@(P,W) products: no (P,H,W) tensor.
        rf, cf = pos_rows.float(), pos_cols.float()
        total = (rf * drops[:, None]).T @ cf
        count = rf.T @ cf
    return total / count


def _to_fp32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, list | tuple):
        return type(out)(_to_fp32(o) for o in out)
    return out


@contextmanager
def bf16_only(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Run just these submodules under bf16 autocast, their outputs cast back to fp32.

    Why: with GeoViT at random init, bf16 in the transformer and classifier (rounded logits,
    bf16 attention) decorrelates the heatmap from fp32 (r = 0.94 on the seed preset), while bf16
    in the CNN alone keeps r > 0.999 and still does about half of the FLOPs at bf16 speed.
    """
    stack: list[torch.autocast] = []

    def enter(module: torch.nn.Module, args: Any) -> None:
        ctx = torch.autocast(next(module.parameters()).device.type, dtype=torch.bfloat16)
        ctx.__enter__()
        stack.append(ctx)

    def leave(module: torch.nn.Module, args: Any, out: Any) -> Any:
        stack.pop().__exit__(None, None, None)
        return _to_fp32(out)

    handles = [
        h
        for m in modules
        for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def probability_fn(model: torch.nn.Module, temperature: float = 1.0) -> ModelFn:
    """softmax(model(x) / T): a plain module as a `model_fn` (tests, benchmarks)."""
    return lambda x: torch.softmax(model(x).float() / temperature, dim=-1)


def parse_fill(fill: str, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor | None:
    """'mean' -> None (dataset mean colour); 'R,G,B' (0-255) -> that colour, normalized."""
    if fill.strip().lower() == "mean":
        return None
    try:
        rgb = [float(v) for v in fill.split(",")]
    except ValueError:
        rgb = []
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise GeovitError(f"--fill {fill!r} must be 'mean' or R,G,B with values 0-255, e.g. 0,0,0")
    m, s = torch.tensor(mean), torch.tensor(std)
    return (torch.tensor(rgb) / 255.0 - m) / s


@dataclass
class Explanation:
    """An occlusion heatmap with what it explains."""

    heatmap: np.ndarray  # (S, S) in model-input pixels
    photo: np.ndarray  # (h, w, 3) uint8, the photo as given (the heatmap is stretched onto it)
    target: int  # class index the heatmap explains
    target_kind: Literal["true", "top"]
    token: str
    name: str
    prob: float  # p(target) on the unoccluded image
    top: int  # the model's top-1 class
    top_prob: float
    probs: np.ndarray | None = field(default=None, repr=False)  # (K,) on the unoccluded image
    method: str = "occlusion"  # the explanation method (EXPLAINERS) that made the heatmap


# ----------------------------------------------------------------------------- explainers

Explainer = Callable[..., torch.Tensor]
"""(predictor, x (3,H,W) model-normalized, target class, **options) -> (H,W) heatmap: how much
each pixel matters for p(target)."""

EXPLAINERS: dict[str, Explainer] = {}


def register_explainer(name: str) -> Callable[[Explainer], Explainer]:
    """Add an explanation method under `name`; its keyword-only parameters are its options."""

    def add(fn: Explainer) -> Explainer:
        EXPLAINERS[name] = fn
        return fn

    return add


def explainer_options(method: str) -> dict[str, Any]:
    """The options of an explanation method with their defaults."""
    params = inspect.signature(get_explainer(method)).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


def get_explainer(method: str) -> Explainer:
    """The registered explanation method `method`, or a GeovitError listing them."""
    if method not in EXPLAINERS:
        raise GeovitError(
            f"unknown explanation method {method!r}; choose one of {', '.join(EXPLAINERS)}"
        )
    return EXPLAINERS[method]


def check_options(method: str, options: dict[str, Any]) -> None:
    """One-line error for an option `method` does not take."""
    known = explainer_options(method)
    unknown = [name for name in options if name not in known]
    if unknown:
        raise GeovitError(
            f"explanation method {method!r} has no option {unknown[0]!r}; "
            f"its options: {', '.join(known)}"
        )


@register_explainer("occlusion")
def occlusion_explainer(
    predictor: Predictor,
    x: torch.Tensor,
    target: int,
    *,
    patch: int | None = None,
    stride: int | None = None,
    fill: str = "mean",
    batch_size: int = 32,
    fast: bool = False,
) -> torch.Tensor:
    """Occlusion sensitivity (see :func:`occlusion`). `patch`/`stride` default to
    occlusion_window(the model's input size); `fill` is "mean" or "R,G,B" (0-255)."""
    if batch_size < 1:
        raise GeovitError(f"occlusion batch_size {batch_size} must be at least 1")
    auto_patch, auto_stride = occlusion_window(int(x.shape[-1]))
    patch = patch or auto_patch
    stride = stride or min(auto_stride, patch)
    return occlusion(
        predictor.predict_proba,
        x,
        target,
        patch=patch,
        stride=stride,
        fill=parse_fill(fill, predictor.mean, predictor.std),
        batch_size=batch_size,
        fast=fast,
        # bf16 in the CNN only (see the module docstring); an ONNX model has no torch CNN
        # bf16 in the CNN only (see the module docstring); an ONNX model has no torch CNN
        bf16_modules=[cnn]
        if (cnn := getattr(getattr(predictor, "model", None), "cnn", None)) is not None
        else None,
    )


def explain_image(
    predictor: Predictor,
    image: Any,
    *,
    lat: float | None = None,
    lon: float | None = None,
    target: Literal["true", "top"] | None = None,
    method: str = "occlusion",
    **options: Any,
) -> Explanation:
    """Heatmap of one photo for its true cell (given lat/lon) or the top prediction, by the
    registered explanation `method` with its `options` (occlusion: patch, stride, fill,
    batch_size, fast), checked before any work.

    `target=None` picks "true" when a location is given, else "top".
    """
    from geovit.data.images import load_image

    explainer = get_explainer(method)
    check_options(method, options)
    kind = target or ("true" if lat is not None and lon is not None else "top")
    pixels = load_image(image)  # decoded once: the model's input and the figure's photo
    x = predictor.transform(pixels)
    probs = torch.as_tensor(predictor.predict_proba(x[None]))[0]
    top = int(probs.argmax())
    cells = predictor.cells
    if kind == "true":
        if lat is None or lon is None:
            raise GeovitError("--target true needs the photo's location: pass --lat and --lon")
        idx = int(cells.assign(np.array([lat]), np.array([lon]))[0])
        if idx < 0:
            raise GeovitError(
                f"location ({lat}, {lon}) lies in no cell of this model (pruned or outside the "
                "training area); use --target top"
            )
    else:
        idx = top
    heat = explainer(predictor, x, idx, **options)
    return Explanation(
        heatmap=heat.cpu().numpy(),
        photo=pixels.permute(1, 2, 0).numpy(),
        target=idx,
        target_kind=kind,
        token=str(cells.tokens[idx]),
        name=str(cells.names[idx]),
        prob=float(probs[idx]),
        top=top,
        top_prob=float(probs[top]),
        probs=probs.double().numpy(),
        method=method,
    )


def render_explanation(expl: Explanation, path: str | Path | None = None, *, dpi: int = 110):
    """PNG figure: the photo, and the heatmap over a grey copy of it on a diverging scale centred
    at 0 (red: hiding the region lowers p(target), blue: raises it) whose symmetric range is
    stated in the colour bar. Writes `path` atomically when given; returns the Figure."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    from geovit.figures import save_figure

    h, w = expl.photo.shape[:2]
    fig = Figure(figsize=(10, 10 * h / (2 * w) + 1.4), dpi=dpi, layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    ax0.imshow(expl.photo)
    ax0.set_title("photo", fontsize=13)
    ax1.imshow(expl.photo.mean(axis=2), cmap="gray", vmin=0, vmax=255)  # colours stay readable
    lim = heat_range(expl.heatmap)
    im = ax1.imshow(
        expl.heatmap,
        cmap=HEAT_CMAP,
        norm=TwoSlopeNorm(0.0, -lim, lim),
        alpha=0.75,
        extent=(0, w, h, 0),  # stretched back to the photo's aspect (the model saw it squashed)
        interpolation="bilinear",
    )
    ax1.set_title("occlusion sensitivity", fontsize=13)
    for ax in (ax0, ax1):
        ax.set_axis_off()
    fig.colorbar(
        im, ax=ax1, shrink=0.8, label=f"drop in p(target cell) when occluded, range ±{lim:.2g}"
    )
    place = f", most photos near {expl.name}" if expl.name else ""
    top = "" if expl.top == expl.target else f" (top-1 p={expl.top_prob:.3f})"
    fig.suptitle(
        f"{expl.target_kind} cell {expl.token}{place}: p={expl.prob:.3f}{top}", fontsize=14
    )
    if path is not None:
        save_figure(fig, path)
    return fig


HEAT_CMAP = "RdBu_r"  # diverging: white at 0


def heat_range(heatmap: np.ndarray) -> float:
    """The symmetric colour range ±max|value| (a tiny floor so an all-zero map still draws)."""
    return float(np.abs(heatmap).max()) or 1e-9
