"""A model's `config.json` fetched from the Hugging Face Hub by repository id, cached on disk.

`org/name` (or `hf:org/name`, `hf:org/name@revision`) reads
`{HF_ENDPOINT or https://huggingface.co}/org/name/resolve/{revision}/config.json`, sending `HF_TOKEN` when
set (gated models need it). The file is kept under `$MEMTRAFFIC_CACHE/hf/` (default
`~/.cache/memtraffic/hf/`) and read from there afterwards, so a model fetched once works offline;
`HF_HUB_OFFLINE=1` never touches the network. Only the config is fetched: the simulator needs shapes,
not weights. Every failure is one ConfigError line saying what to do instead.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from simulator.atomic import write_atomic
from simulator.errors import ConfigError

HUB_PREFIX = "hf:"
DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 20.0
MAX_CONFIG_BYTES = 4 << 20  # a config.json is a few kB; a larger answer is not one
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REVISION = re.compile(r"^[\w./-]+$")


def parse_hub_spec(spec: str) -> tuple[str, str] | None:
    """(repo id, revision) when `spec` names a Hub repository, else None. A bare `org/name` counts only
    when the caller found no such local path; `hf:` always does."""
    explicit = spec.startswith(HUB_PREFIX)
    body = spec[len(HUB_PREFIX) :] if explicit else spec
    repo, _, revision = body.partition("@")
    local_file = not explicit and repo.lower().endswith((".json", ".yaml", ".yml"))
    bad_revision = bool(revision) and (
        not _REVISION.match(revision) or any(part in ("", ".", "..") for part in revision.split("/"))
    )
    if local_file or not _REPO_ID.match(repo) or ".." in repo or bad_revision:
        if explicit:
            raise ConfigError(f"{spec!r}: a Hub model is hf:ORG/NAME or hf:ORG/NAME@REVISION")
        return None
    return repo, revision or "main"


def cache_path(repo: str, revision: str) -> Path:
    root = Path(os.environ.get("MEMTRAFFIC_CACHE") or Path.home() / ".cache" / "memtraffic")
    # quoted, so that distinct repositories and revisions ("x/y" and "x--y") never share a cache file
    return root / "hf" / quote(repo, safe="") / quote(revision, safe="") / "config.json"


def fetch_config(repo: str, revision: str = "main") -> tuple[dict[str, Any], str]:
    """The parsed config.json of a Hub repository and where it came from (the cache or the URL)."""
    cached = cache_path(repo, revision)
    if cached.is_file():
        return _parse(cached.read_bytes(), str(cached)), str(cached)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes"}:
        raise ConfigError(f"{repo}: not in the cache ({cached}) and HF_HUB_OFFLINE is set")
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if urlsplit(endpoint).scheme not in ("http", "https"):
        raise ConfigError(f"HF_ENDPOINT {endpoint!r} is not an http(s) address")
    url = f"{endpoint}/{repo}/resolve/{revision}/config.json"
    body = _download(url, repo)
    config = _parse(body, url)
    _cache(cached, body)
    return config, url


def _download(url: str, repo: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "memtraffic"})
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            body = response.read(MAX_CONFIG_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            hint = "gated or private: accept its licence on the Hub and set HF_TOKEN"
            raise ConfigError(f"{repo}: HTTP {exc.code} from {url} ({hint})") from None
        if exc.code == 404:
            hint = "check the repository id and revision"
            raise ConfigError(f"{repo}: no config.json at {url} ({hint})") from None
        raise ConfigError(f"{repo}: HTTP {exc.code} from {url}") from None
    except (urllib.error.URLError, TimeoutError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"{repo}: cannot reach {url} ({reason}); pass a local config.json path instead"
        ) from None
    if len(body) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{repo}: {url} is larger than {MAX_CONFIG_BYTES >> 20} MB: not a config.json")
    return body


def _parse(body: bytes, label: str) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{label}: not a JSON config.json ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a JSON object, got {type(data).__name__}")
    return data


def _cache(path: Path, body: bytes) -> None:
    """Keep the file (atomically: a crash never leaves half a config); a cache that cannot be written
    costs only a refetch next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: Path(tmp).write_bytes(body))
    except (OSError, ConfigError):
        pass
