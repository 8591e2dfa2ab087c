"""Datasets and models from the Hugging Face Hub and Kaggle, through their own clients.

- ``hf-hub:USER/NAME[@REVISION]`` model specs resolve to a snapshot folder in the Hub cache
  (offline when HF_HUB_OFFLINE=1, or when the Hub is unreachable and the model is cached);
- OSV-5M comes from the ``osv5m/osv5m`` dataset repo (allow-patterns per split and shard,
  resumable, each file checked by huggingface_hub against the Hub's metadata), into the cache,
  then hard-linked into the layout geovit's reader expects (zips stay zipped);
- OSV-Mini-129k comes from Kaggle through kagglehub;
- model folders (geovit.modelfolder) are uploaded with HfApi.upload_folder.

Every network path probes its host first (geovit.net), so offline it fails in seconds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from geovit.errors import GeovitError
from geovit.modelfolder import FILES
from geovit.net import hub_offline, require_host

HUB_PREFIX = "hf-hub:"
OSV5M_REPO = "osv5m/osv5m"
OSV5M_SPLITS = ("train", "test")
OSV_MINI_KAGGLE = "josht000/osv-mini-129k"
KAGGLE_HOST = "www.kaggle.com"
OFFLINE_ADVICE = "set HF_HUB_OFFLINE=1 to use what is already in the Hugging Face cache"
GB = 1e9


def require_hub(what: str) -> None:
    """Fail in seconds when the Hub endpoint cannot be reached."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    require_host(host, what, f"check the network, or {OFFLINE_ADVICE}")


def _hub_error(what: str, exc: Exception) -> GeovitError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return GeovitError(f"{what} failed ({type(exc).__name__}: {first})")


def snapshot(
    repo_id: str, *, repo_type: str, allow_patterns: list[str], revision: str | None = None
) -> Path:
    """huggingface_hub.snapshot_download, offline from the cache when it must be.

    With HF_HUB_OFFLINE the cache alone answers; when the Hub is unreachable a cached snapshot
    still answers (local_files_only) instead of minutes of retries.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    what = f"fetching {repo_type} {repo_id}"
    kwargs = dict(repo_type=repo_type, revision=revision, allow_patterns=allow_patterns)
    if not hub_offline():
        try:
            require_hub(what)
        except GeovitError as unreachable:
            try:
                return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
            except LocalEntryNotFoundError:
                raise unreachable from None
    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except LocalEntryNotFoundError as exc:
        raise GeovitError(
            f"{repo_type} {repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            "and HF_HUB_OFFLINE is set: unset it to download, or point HF_HUB_CACHE at a cache "
            "that holds it"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise _hub_error(what, exc) from exc


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """``hf-hub:USER/NAME[@REVISION]`` -> (repo id, revision or None)."""
    repo, _, revision = spec[len(HUB_PREFIX) :].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise GeovitError(f"{spec!r} is not hf-hub:USER/NAME (optionally @REVISION)")
    return repo, revision or None


def resolve_model(path: str | os.PathLike) -> Path:
    """A local path unchanged; ``hf-hub:USER/NAME`` -> its model folder in the Hub cache."""
    spec = os.fspath(path)
    if not spec.startswith(HUB_PREFIX):
        return Path(spec)
    repo, revision = parse_model_spec(spec)
    return snapshot(repo, repo_type="model", allow_patterns=list(FILES), revision=revision)


# ------------------------------------------------------------------------------ OSV-5M


def parse_shards(spec: str | None) -> list[str] | None:
    """``"00-04"`` / ``"0,3,7"`` / ``"2-3,9"`` -> zero-padded shard names; None -> all shards."""
    if spec is None or spec.strip() in ("", "all"):
        return None
    names: list[str] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise GeovitError(f"--shards {spec!r}: write ranges like 00-04 or lists like 0,3,7")
        names += [f"{n:02d}" for n in range(int(lo), int(hi or lo) + 1)]
    return sorted(set(names))


def osv5m_patterns(split: str, shards: list[str] | None) -> list[str]:
    """allow_patterns for one split (or "all") of osv5m/osv5m: its CSV and image zips."""
    if split != "all" and split not in OSV5M_SPLITS:
        raise GeovitError(f"--split {split!r}: choose {', '.join(OSV5M_SPLITS)} or all")
    patterns: list[str] = []
    for s in OSV5M_SPLITS if split == "all" else (split,):
        patterns.append(f"{s}.csv")
        patterns += [f"images/{s}/{n}.zip" for n in shards] if shards else [f"images/{s}/*.zip"]
    return patterns


@dataclass(frozen=True)
class DownloadPlan:
    """What a download fetches: repo files and sizes, bytes still to fetch, free bytes."""

    sizes: dict[str, int]
    needed: int
    free: int
    where: Path

    def line(self) -> str:
        return (
            f"{len(self.sizes)} files, {sum(self.sizes.values()) / GB:.2f} GB; "
            f"{self.needed / GB:.2f} GB to fetch, {self.free / GB:.2f} GB free at {self.where}"
        )


def free_bytes(path: Path) -> int:
    """Free space of the filesystem that holds ``path`` (or would, once created)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def plan_download(
    entries: Iterable, patterns: list[str], cached: Iterable[str], where: Path
) -> DownloadPlan:
    """Select the repo files matching ``patterns`` (RepoFile entries of list_repo_tree) and
    check they fit on the disk; ``cached`` names files already in the cache."""
    from huggingface_hub.utils import filter_repo_objects

    files = {e.path: int(e.size) for e in entries if hasattr(e, "size")}
    chosen = list(filter_repo_objects(list(files), allow_patterns=patterns))
    missing = [p for p in patterns if "*" not in p and p not in files]
    if missing:
        raise GeovitError(
            f"{OSV5M_REPO} has no {', '.join(missing)}: pick --split/--shards that exist "
            "(the test split has shards 00-04)"
        )
    sizes = {p: files[p] for p in chosen}
    have = set(cached)
    plan = DownloadPlan(
        sizes=sizes,
        needed=sum(s for p, s in sizes.items() if p not in have),
        free=free_bytes(where),
        where=where,
    )
    if plan.needed > plan.free:
        raise GeovitError(
            f"the download needs {plan.needed / GB:.2f} GB but {plan.where} has only "
            f"{plan.free / GB:.2f} GB free: free space, fetch fewer --shards, or point "
            "HF_HUB_CACHE at a larger disk"
        )
    return plan


def link_tree(source: Path, out: Path, paths: Iterable[str]) -> list[Path]:
    """Place ``source/p`` at ``out/p`` for each p: a hard link to the cached file (no second
    copy), a symlink across filesystems; each appears atomically (link to a temp name, rename)."""
    placed = []
    for rel in paths:
        src = (source / rel).resolve()
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.link.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            os.symlink(src, tmp)
        os.replace(tmp, dest)
        placed.append(dest)
    return placed


def download_osv5m(
    out: str | os.PathLike, split: str = "all", shards: str | None = None, log=print
) -> Path:
    """OSV-5M's split(s)/shards from osv5m/osv5m into ``out`` (train.csv, images/train/00.zip,
    ...), the layout `geovit.data.manifest.read_osv5m` reads."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import filter_repo_objects

    out = Path(out)
    patterns = osv5m_patterns(split, parse_shards(shards))
    if not hub_offline():
        require_hub(f"download {OSV5M_REPO}")
        try:
            entries = list(HfApi().list_repo_tree(OSV5M_REPO, repo_type="dataset", recursive=True))
        except HfHubHTTPError as exc:
            raise _hub_error(f"listing {OSV5M_REPO}", exc) from exc
        cached = [
            e.path
            for e in entries
            if isinstance(try_to_load_from_cache(OSV5M_REPO, e.path, repo_type="dataset"), str)
        ]
        plan = plan_download(entries, patterns, cached, Path(constants.HF_HUB_CACHE))
        log(f"{OSV5M_REPO}: {plan.line()}")
    folder = snapshot(OSV5M_REPO, repo_type="dataset", allow_patterns=patterns)
    present = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    files = sorted(filter_repo_objects(present, allow_patterns=patterns))
    absent = [p for p in patterns if "*" not in p and p not in files]
    if absent:
        raise GeovitError(
            f"the cached {OSV5M_REPO} snapshot lacks {', '.join(absent)}: run again online "
            "(without HF_HUB_OFFLINE) to fetch them"
        )
    link_tree(folder, out, files)
    log(f"{len(files)} files in {out} (hard links into the Hugging Face cache)")
    return out


# ------------------------------------------------------------------------------ OSV-Mini


KAGGLE_CREDENTIALS_HELP = (
    "create an API token at kaggle.com > Settings > API and put kaggle.json in ~/.kaggle/ "
    "(or $KAGGLE_CONFIG_DIR), or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN)"
)


def download_osv_mini(out: str | os.PathLike, log=print) -> Path:
    """OSV-Mini-129k from Kaggle (kagglehub) into ``out``; needs Kaggle credentials."""
    import kagglehub
    from kagglehub.config import get_kaggle_credentials

    try:
        credentials = get_kaggle_credentials()
    except ValueError as exc:
        raise GeovitError(f"{exc}: fix or remove it; {KAGGLE_CREDENTIALS_HELP}") from exc
    if credentials is None:
        raise GeovitError(f"no Kaggle credentials: {KAGGLE_CREDENTIALS_HELP}")
    require_host(KAGGLE_HOST, f"download {OSV_MINI_KAGGLE}", "check the network and retry")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        path = kagglehub.dataset_download(OSV_MINI_KAGGLE, output_dir=str(out))
    except Exception as exc:  # kagglehub raises requests/its own errors: one line for the user
        raise _hub_error(f"Kaggle download of {OSV_MINI_KAGGLE}", exc) from exc
    log(f"{OSV_MINI_KAGGLE} in {path}")
    return Path(path)


# ------------------------------------------------------------------------------ upload


def upload_model_folder(
    folder: str | os.PathLike, repo: str, *, private: bool = False, message: str | None = None
) -> str:
    """Create ``repo`` (if new) and upload ``folder`` with HfApi; returns the commit URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    parse_model_spec(HUB_PREFIX + repo)
    if not hub_offline():
        if get_token() is None:
            raise GeovitError(
                f"not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN "
                f"to a write token, then push to {repo} again"
            )
        require_hub(f"push to {repo}")
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo,
            folder_path=os.fspath(folder),
            repo_type="model",
            commit_message=message or "geovit push",
        )
    except OfflineModeIsEnabled as exc:
        raise GeovitError(
            f"cannot push to {repo}: HF_HUB_OFFLINE is set; unset it and push again"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise _hub_error(f"push to {repo}", exc) from exc
    return str(info.commit_url if hasattr(info, "commit_url") else info)
