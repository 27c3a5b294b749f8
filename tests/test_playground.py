"""The playground page at ``/`` without a browser: its headers, ``PLAYGROUND=false``, the page's
resources (same origin, nothing inline) and a static check that its script never turns data into
HTML or code. ``tests/test_playground_browser.py`` drives the page in a real browser.

The app is the real one (:func:`build_api` over an :class:`ExecutionService` on SQLite), called
in-process; no route here reaches the executor.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

import serve_app.web
from serve_app.db import Database
from serve_app.http import ExecutionService, build_api
from serve_app.http.routes.playground import CONTENT_SECURITY_POLICY, EDITOR_FILES
from serve_app.ratelimit import build_rate_limiter
from serve_app.web import STATIC_DIR, missing_vendor_files
from tests.support.asgi import call
from tests.support.settings import migrated_sqlite_settings

SCRIPT = STATIC_DIR / "playground.js"
CSP_DIRECTIVES = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' blob:",
    "connect-src": "'self'",
    "base-uri": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'none'",
}
# Sinks that parse a string as HTML or run it as code.
_SINKS = re.compile(
    r"\.(?:innerHTML|outerHTML)\b|insertAdjacentHTML|document\s*\.\s*write(?:ln)?\s*\("
    r"|\beval\s*\(|\bnew\s+Function\s*\(|\bFunction\s*\(|\b(?:setTimeout|setInterval)\s*\(\s*[\"'`]"
    r"|\.srcdoc\b|createContextualFragment|DOMParser|\bjavascript:"
)
_COMMENTS = re.compile(r"/\*.*?\*/|(?<![:\"'\\])//[^\n]*", re.DOTALL)


class _Page(HTMLParser):
    """The page's elements with their attributes, and the text of its script and style elements."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._open = tag if tag in {"script", "style"} else None

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.inline.append(f"<{self._open}>{data.strip()[:80]}")


def parsed(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def sinks(source: str) -> list[str]:
    """The HTML and code sinks ``source`` (JavaScript) uses outside its comments."""
    return [match.group(0) for match in _SINKS.finditer(_COMMENTS.sub("", source))]


class App:
    def __init__(self, directory: Path, *, playground: bool) -> None:
        settings = migrated_sqlite_settings(directory, playground=playground)
        self.database = Database.from_settings(settings)
        self.service = ExecutionService(settings, self.database, build_rate_limiter(settings), None)
        self.api: FastAPI = build_api(settings, self.service)

    def get(self, url: str) -> httpx.Response:
        return call(self.api, "GET", url)

    def close(self) -> None:
        asyncio.run(self.service.aclose(5.0))
        self.database.dispose()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    under_test = App(tmp_path, playground=True)
    yield under_test
    under_test.close()


def test_the_page_is_served_with_a_strict_policy(app: App) -> None:
    response = app.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives == CSP_DIRECTIVES
    assert "unsafe" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"  # the edge's, kept
    assert response.headers["x-request-id"]
    assert '<textarea id="code"' in response.text


def test_off_the_page_answers_404_in_the_api_format(tmp_path: Path) -> None:
    app = App(tmp_path, playground=False)
    try:
        response = app.get("/")
        unknown = app.get("/no-such-page")
        assert response.status_code == 404
        body = response.json()
        assert body["error"]["code"] == "not_found"
        assert set(body["error"]) == set(unknown.json()["error"])
        assert body["error"]["request_id"] == response.headers["x-request-id"]
        assert "html" not in response.headers["content-type"]
    finally:
        app.close()


def test_the_page_loads_only_its_own_files(app: App) -> None:
    page = parsed(app.get("/").text)
    assert page.inline == []  # no inline script or style: the policy would refuse them
    references: list[str] = []
    for tag, attributes in page.elements:
        handlers = [name for name in attributes if name.startswith("on")]
        assert handlers == [], f"<{tag}> has inline handlers {handlers}"
        assert "style" not in attributes, f"<{tag}> has a style attribute"
        references += [attributes[name] or "" for name in ("src", "href") if name in attributes]
    scripts = [attributes.get("src") for tag, attributes in page.elements if tag == "script"]
    assert "/static/playground.js" in scripts
    assert len(references) >= 3
    for reference in references:
        # A path of this origin: not another scheme or host, nor protocol-relative.
        assert reference.startswith("/static/") and not reference.startswith("//"), reference
        assert app.get(reference).status_code == 200, f"{reference} is not served"


def test_the_page_static_files_are_typed_and_not_sniffed(app: App) -> None:
    for name, media_type in (("playground.js", "javascript"), ("playground.css", "text/css")):
        response = app.get(f"/static/{name}")
        assert response.status_code == 200
        assert media_type in response.headers["content-type"]
        assert response.headers["x-content-type-options"] == "nosniff"


def test_without_the_vendored_editor_the_page_falls_back_to_a_textarea(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert missing_vendor_files(*EDITOR_FILES) == [], "run scripts/vendor-web-assets"
    monkeypatch.setattr(serve_app.web, "VENDOR_DIR", tmp_path / "no-vendor")
    response = app.get("/")
    assert response.status_code == 200
    assert "/static/vendor/" not in response.text
    scripts = [a.get("src") for tag, a in parsed(response.text).elements if tag == "script"]
    assert scripts == ["/static/playground.js"]
    assert '<textarea id="code"' in response.text
    assert "scripts/vendor-web-assets" in SCRIPT.read_text()  # what the page then tells


def test_the_script_has_no_html_or_code_sinks() -> None:
    source = SCRIPT.read_text()
    assert sinks(source) == []
    assert "textContent" in source and "createTextNode" in source


def test_the_sink_check_finds_each_sink() -> None:
    hostile = [
        "out.innerHTML = chunk;",
        "card.outerHTML = record.stdout;",
        "node.insertAdjacentHTML('beforeend', text);",
        "document.write(record.stderr);",
        "eval(data);",
        "new Function(code)();",
        'setTimeout("run()", 1);',
        "frame.srcdoc = html;",
        "a.href = 'javascript:alert(1)';",
    ]
    for line in hostile:
        assert sinks(line), line
    assert sinks("// innerHTML in a comment\n/* eval(x) */ node.textContent = x;") == []


def test_the_key_stays_in_the_tab() -> None:
    source = _COMMENTS.sub("", SCRIPT.read_text())
    assert "sessionStorage" in source
    for forbidden in ("localStorage", "document.cookie", "indexedDB", "EventSource"):
        assert forbidden not in source, forbidden
