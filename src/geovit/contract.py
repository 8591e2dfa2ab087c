"""The values a model carries besides its weights (cells, normalization, input size,
temperature), checked before use. Torch-free: checkpoints and ONNX exports share the checks.
"""

from __future__ import annotations

import math
import os

from geovit.errors import GeovitError


def check_values(raw: dict, path: str | os.PathLike) -> None:
    """Refuse values that would load but predict garbage (NaN temperature -> NaN probs)."""

    def bad(what: str) -> GeovitError:
        return GeovitError(f"{path}: {what}; the file is damaged or was edited")

    temperature = raw["temperature"]
    if (
        not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise bad(f"temperature {temperature!r} is not a finite number > 0")
    for key in ("mean", "std"):
        values = raw[key]
        if len(values) != 3 or not all(
            isinstance(v, int | float) and math.isfinite(v) for v in values
        ):
            raise bad(f"{key} {values!r} is not 3 finite numbers")
    if min(raw["std"]) <= 0:
        raise bad(f"std {raw['std']!r} has a value <= 0")
    if not isinstance(raw["image_size"], int) or raw["image_size"] < 1:
        raise bad(f"image_size {raw['image_size']!r} is not a positive integer")
