"""Which validation metric picks the epoch a run keeps, and which way it improves.

Free of torch so the CLI can offer the choice (and list it in --help) without importing the
trainer; the values are the names the training module logs.
"""

from __future__ import annotations

from enum import StrEnum

from geovit.errors import GeovitError


class Monitor(StrEnum):
    """A logged validation metric that can select the kept epoch (model.pt)."""

    loss = "val/loss"
    acc1 = "val/acc1"
    median_km = "val/median_km"
    geoscore = "val/geoscore"

    @property
    def mode(self) -> str:
        """Lightning ModelCheckpoint's mode: accuracy and GeoGuessr score rise, the others fall."""
        return "max" if self in (Monitor.acc1, Monitor.geoscore) else "min"


def parse_monitor(name: str) -> Monitor:
    """The Monitor called `name`, or a GeovitError listing the valid names."""
    try:
        return Monitor(name)
    except ValueError:
        valid = ", ".join(m.value for m in Monitor)
        raise GeovitError(f"unknown monitor {name!r}: use one of {valid}") from None
