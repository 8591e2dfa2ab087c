"""geovit: learn where a street-level photo was taken."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import pandas as pd

    from geovit.predictor import Predictor

__all__ = ["__version__", "evaluate", "load", "predict"]


def load(path: Any, device: Any = None, **options: Any) -> Predictor:
    """``geovit.load(CKPT)`` -> Predictor; torch is imported only when a model is loaded, so
    ``import geovit`` stays light. ``options``: point, index, tta (Predictor.configure)."""
    from geovit.predictor import load as _load

    return _load(path, device=device, **options)


def predict(checkpoint: Any, images: Any, top_k: int = 5, device: Any = None) -> pd.DataFrame:
    """Predict photos (a path, folder, glob or zip, or a list of them) with a checkpoint: one row
    per photo and rank with image, rank, token, name, probability, lat, lon (the cell's
    centroid) and error (why an unreadable photo has no prediction; empty otherwise)."""
    import pandas as pd

    from geovit.errors import GeovitError
    from geovit.predictor import expand_images, predict_files

    paths, problems = expand_images([str(images)] if isinstance(images, str | os.PathLike)
                                    else [str(i) for i in images])  # fmt: skip
    if problems:
        raise GeovitError("; ".join(f"{arg}: {why}" for arg, why in problems))
    rows = []
    for path, pred in predict_files(load(checkpoint, device=device), paths, top_k):
        if isinstance(pred, str):
            rows.append((path, 0, "", "", float("nan"), float("nan"), float("nan"), pred))
            continue
        for r in range(len(pred.tokens)):
            rows.append((path, r + 1, pred.tokens[r], pred.names[r], float(pred.probs[r]),
                         float(pred.lat[r]), float(pred.lon[r]), ""))  # fmt: skip
    cols = ["image", "rank", "token", "name", "probability", "lat", "lon", "error"]
    return pd.DataFrame(rows, columns=cols)


def evaluate(checkpoint: Any, data: Any, split: str = "test", **kw: Any) -> dict[str, Any]:
    """The metrics dict of `geovit evaluate` (what metrics.json holds) for a dataset split;
    ``point``, ``index`` and ``tta`` in ``kw`` choose how predictions are made (load's)."""
    from geovit.data.manifest import load_manifest
    from geovit.evaluation import evaluate as run

    options = {k: kw.pop(k) for k in ("point", "index", "tta") if k in kw}
    manifest, _ = load_manifest(data)
    return run(load(checkpoint, **options), manifest, split, **kw)
