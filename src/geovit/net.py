"""Fail in seconds, not after minutes of client retries, when a download host is unreachable.

Every downloader (timm weights, the Hugging Face Hub, Kaggle, object-store shards) probes its
host once with a short TCP connect before handing over to its real client, whose own retry
loops take minutes offline.
"""

from __future__ import annotations

import os
import socket

from geovit.errors import GeovitError

PROBE_TIMEOUT_S = 5.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")


def hub_offline() -> bool:
    """True when the user runs the Hugging Face Hub offline (its clients then use the cache)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def require_host(host: str, what: str, advice: str, port: int = 443) -> None:
    """Raise a one-line GeovitError when ``host:port`` cannot be reached within a few seconds.

    Skipped behind a proxy (a direct probe would say nothing about it).
    """
    if any(os.environ.get(k) for k in PROXY_VARIABLES):
        return
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise GeovitError(f"cannot reach {host} to {what} ({exc}): {advice}") from exc
