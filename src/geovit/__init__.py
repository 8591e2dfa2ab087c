"""geovit: learn where a street-level photo was taken."""

__version__ = "0.1.0"
