"""The console's files: served from the installed package with strict headers; the client bundle is pinned."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import tomllib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from hub.transport.console import CONTENT_SECURITY_POLICY, FILES, read_files

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
NPM_BUNDLE = NODE_DIR / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"
VENDORED = ROOT / "hub" / "console" / "socket.io.min.js"


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def test_vendored_client_is_the_pinned_npm_bundle() -> None:
    """Bumping socket.io-client in tests/node without re-vendoring (or the reverse) fails here."""
    if not NPM_BUNDLE.is_file():
        pytest.fail(f"{NPM_BUNDLE} is missing: run `npm ci` in tests/node")
    assert VENDORED.read_bytes() == NPM_BUNDLE.read_bytes(), (
        f"re-vendor: cp {NPM_BUNDLE.relative_to(ROOT)} {VENDORED.relative_to(ROOT)}"
    )
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/socket.io-client"]["version"]
    assert f"Socket.IO v{pinned}\n" in VENDORED.read_text()[:200]


def test_every_console_file_is_package_data() -> None:
    """A wheel (not only an editable install) carries every file the hub serves."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["hub"]
    for name in FILES:
        assert any(fnmatch.fnmatch(f"console/{name}", p) for p in patterns), name
    assert set(read_files()) == set(FILES)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def test_page_has_no_inline_script_or_style() -> None:
    """Everything the CSP allows comes from files: no inline script, handler or style attribute."""
    parser = _Tags()
    parser.feed(read_files()["index.html"].decode())
    scripts = [attrs.get("src") for tag, attrs in parser.tags if tag == "script"]
    assert scripts == ["/console/socket.io.min.js", "/console/console.js"]
    assert parser.script_text == ""
    for tag, attrs in parser.tags:
        assert not [a for a in attrs if a.startswith("on") or a == "style"], (tag, attrs)
        assert tag != "style"
    assert "innerHTML" not in read_files()["console.js"].decode()


@pytest.mark.asyncio
async def test_console_is_served_with_security_headers(hub, http) -> None:  # type: ignore[no-untyped-def]
    files = await asyncio.to_thread(read_files)
    for path, name in [("/console", "index.html"), ("/console/", "index.html")] + [
        (f"/console/{n}", n) for n in FILES
    ]:
        async with http.get(hub.url + path) as resp:
            assert resp.status == 200, path
            assert await resp.read() == files[name], path
            assert resp.content_type == FILES[name]
            csp = resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            etag = resp.headers["ETag"]
        async with http.get(hub.url + path, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304 and await resp.read() == b""
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert csp == CONTENT_SECURITY_POLICY
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp

    # Only the listed files exist; nothing else under /console reaches the file system.
    for path in ("/console/nope.js", "/console/socket.io.min.js.map", "/console/..%2Fapp.py"):
        async with http.get(URL(hub.url + path, encoded=True)) as resp:
            assert resp.status == 404, path
            assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
            assert await resp.text() == "not found"
    async with http.get(URL(hub.url + "/console/%2e%2e/transport/console.py", encoded=True)) as resp:
        assert resp.status == 404
        assert "import" not in await resp.text()


@pytest.mark.asyncio
async def test_the_pages_own_origin_is_admitted_and_others_are_not(hub_factory, http) -> None:  # type: ignore[no-untyped-def]
    """The console connects with Origin = the hub's own origin; the allow-list stays as strict for others."""
    shop = "https://shop.example"
    hub = await hub_factory(allow_origin=(shop,))
    polling = f"{hub.url}/socket.io/?EIO=4&transport=polling"
    other_port = f"http://127.0.0.1:{hub.port + 1 if hub.port < 65535 else hub.port - 1}"
    for origin in (hub.url, shop):
        async with http.get(polling, headers={"Origin": origin}) as resp:
            assert resp.status == 200 and (await resp.text()).startswith("0{"), origin
    foreign = (other_port, f"https://127.0.0.1:{hub.port}", "http://localhost", "null", hub.url + ".evil")
    for origin in foreign:
        async with http.get(polling, headers={"Origin": origin}) as resp:
            assert resp.status == 403, origin
            assert json.loads(await resp.text())["error"]["name"] == "origin_not_allowed"
    # The page itself is a plain navigation (no Origin header) and is served.
    async with http.get(hub.url + "/console") as resp:
        assert resp.status == 200
        assert re.search(r"<title>Soko Live", await resp.text())
