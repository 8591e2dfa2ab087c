"""geovit: learn where a street-level photo was taken."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from geovit.predictor import Predictor

__all__ = ["__version__", "load"]


def load(path: Any, device: Any = None) -> Predictor:
    """``geovit.load(CKPT)`` -> Predictor; torch is imported only when a model is loaded, so
    ``import geovit`` stays light."""
    from geovit.predictor import load as _load

    return _load(path, device=device)
