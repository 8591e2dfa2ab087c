"""Datasets: manifests (pandas only) and, in `geovit.data.images`, the torch image pipeline.

Importing this package does not import torch, so manifest checks stay fast.
"""

from geovit.data.manifest import ManifestReport, load_manifest

__all__ = ["ManifestReport", "load_manifest"]
