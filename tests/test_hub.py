"""Models named by Hub repository id: fetched over real HTTP from a local server standing in for the Hub
(HF_ENDPOINT), cached, reused offline, and every failure one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from simulator.errors import ConfigError
from simulator.hub import parse_hub_spec
from simulator.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
GRANITE = json.loads((ROOT / "tests" / "data" / "hf" / "granite-3.1-3b-a800m.json").read_text())


class _Hub(BaseHTTPRequestHandler):
    """Serves /org/granite/resolve/{main,v1}/config.json; /org/gated -> 403; /org/html -> a web page."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        _Hub.seen.append((self.path, self.headers.get("Authorization")))
        if self.path in ("/org/granite/resolve/main/config.json", "/org/granite/resolve/v1/config.json"):
            self._send(200, json.dumps(GRANITE).encode())
        elif self.path.startswith("/org/gated/"):
            self._send(403, b"gated")
        elif self.path.startswith("/org/html/"):
            self._send(200, b"<html>login</html>")
        else:
            self._send(404, b"not found")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hub.seen = []
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("MEMTRAFFIC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    yield server
    server.shutdown()
    server.server_close()


def test_repo_id_fetches_caches_and_works_offline(
    hub: ThreadingHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "secret")
    local = load_model(ROOT / "tests" / "data" / "hf" / "granite-3.1-3b-a800m.json")
    fetched = load_model("org/granite")
    assert fetched.name == "granite"
    assert fetched.model_dump(exclude={"name"}) == local.model_dump(exclude={"name"})
    assert _Hub.seen == [("/org/granite/resolve/main/config.json", "Bearer secret")]
    cached = tmp_path / "cache" / "hf" / "org%2Fgranite" / "main" / "config.json"
    assert json.loads(cached.read_text()) == GRANITE
    assert [p.name for p in cached.parent.iterdir()] == ["config.json"]  # no temp file left
    hub.shutdown()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_model("hf:org/granite").model_dump() == fetched.model_dump()  # from the cache
    with pytest.raises(ConfigError, match="not in the cache .* HF_HUB_OFFLINE"):
        load_model("hf:org/granite@v1")


def test_revision_and_overrides(hub: ThreadingHTTPServer) -> None:
    m = load_model("hf:org/granite@v1", ["top_k=2"])
    assert m.blocks[0].ffn[0].top_k == 2  # type: ignore[union-attr]
    assert _Hub.seen[0][0] == "/org/granite/resolve/v1/config.json"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("hf:org/missing", "no config.json at http"),
        ("org/missing", "no such local file or directory, nor a Hub model: no config.json"),
        ("hf:org/gated", "HTTP 403 .* set HF_TOKEN"),
        ("hf:org/html", "not a JSON config.json"),
        ("hf:not-a-repo", "hf:ORG/NAME"),
    ],
)
def test_hub_failures_are_one_line(hub: ThreadingHTTPServer, spec: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as exc:
        load_model(spec)
    assert "\n" not in str(exc.value)


def test_a_non_http_endpoint_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "huggingface.co")
    monkeypatch.setenv("MEMTRAFFIC_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="not an http"):
        load_model("hf:org/x")


def test_unreachable_hub_names_the_url_and_the_way_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("MEMTRAFFIC_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="cannot reach http://127.0.0.1:9/org/x/resolve/main/config.json"):
        load_model("hf:org/x")


def test_only_repo_shaped_specs_go_to_the_hub() -> None:
    assert parse_hub_spec("org/name") == ("org/name", "main")
    assert parse_hub_spec("hf:org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    assert parse_hub_spec("configs/model.yaml") is None  # a missing local file, not a repository
    assert parse_hub_spec("a/b/c") is None
    assert parse_hub_spec("../x") is None
    with pytest.raises(ConfigError):
        parse_hub_spec("hf:org/../x")
    with pytest.raises(ConfigError):
        parse_hub_spec("hf:org/name@..")  # a revision never climbs out of its cache folder
    with pytest.raises(ConfigError, match="no such file"):
        load_model("configs/model.yaml")


def test_cli_simulates_a_hub_model(hub: ThreadingHTTPServer) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "simulate", "hf:org/granite", "--batch", "1", "-f", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)[0]
    assert row["model"] == "granite" and row["params"] == pytest.approx(3_298_693_632)
