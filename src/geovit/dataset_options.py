"""How a dataset is read and split: its layout, the val hold-out and a table's columns.

Free of pandas so the CLI lists these choices and defaults without importing the readers;
`geovit.data.manifest.load_manifest` takes its defaults from here. Every command that reads a
dataset must use the same hold-out as `cells build` and `train`, or val images leak into the cells.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SPLITS = ("train", "val", "test")
FORMATS = ("auto", "osv5m", "osv-mini", "table", "exif")
VAL_SPLITS = ("random", "sequence", "spatial")


@dataclass(frozen=True)
class DatasetOptions:
    """`--layout`, the val hold-out (`--val-fraction/--val-split/--split-seed`) and, for tables,
    the columns (`--image-col/--lat-col/--lon-col/--image-template/--sep/--encoding`)."""

    layout: str = "auto"  # one of FORMATS; auto-detected
    val_fraction: float = 0.1
    val_split: str = "sequence"  # one of VAL_SPLITS
    split_seed: int = 0
    image_col: str | None = None
    lat_col: str | None = None
    lon_col: str | None = None
    image_template: str | None = None
    sep: str | None = None
    encoding: str | None = None

    def manifest_kwargs(self) -> dict[str, Any]:
        """These options under load_manifest's keyword names."""
        kwargs = dataclasses.asdict(self)
        kwargs["fmt"] = kwargs.pop("layout")
        kwargs["seed"] = kwargs.pop("split_seed")
        return kwargs
