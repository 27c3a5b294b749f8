"""``/``: the playground, a page to write and run programs in a browser (``PLAYGROUND``).

The page is ``static/playground.html`` with its script and style beside it; it talks to the API
from the browser with the key the user pastes (kept in the tab's ``sessionStorage``). Its answer
carries a strict Content-Security-Policy of its own: scripts and styles from this origin only,
no inline script, images from this origin or the ``blob:`` URLs the page makes of a run's
images, requests to this origin only.

Without the vendored editor (``scripts/vendor-web-assets`` not run) the page is served without
its ``<script>``/``<link>`` elements of ``/static/vendor/``, and the page's script falls back to
a plain ``<textarea>``: the playground still works, and says how to get the editor.
``PLAYGROUND=false``: ``/`` answers 404 ``not_found`` as any unknown path.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time.
from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from serve_app.errors import NotFoundError
from serve_app.http.deps import ServiceDep
from serve_app.web import STATIC_DIR, missing_vendor_files

__all__ = ["CONTENT_SECURITY_POLICY", "EDITOR_FILES", "router"]

router = APIRouter(tags=["playground"])

PAGE = STATIC_DIR / "playground.html"
EDITOR_FILES = (
    "codemirror/lib/codemirror.js",
    "codemirror/lib/codemirror.css",
    "codemirror/mode/python/python.js",
    "codemirror/addon/edit/matchbrackets.js",
)
"""The vendored files the page's editor needs (relative to the vendor directory)."""
_VENDOR_MARK = "/static/vendor/"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        # CodeMirror positions its elements through the CSSOM (element.style), which CSP does
        # not govern: no 'unsafe-inline' of any kind is needed.
        "style-src 'self'",
        "img-src 'self' blob:",  # the run's images, shown from the bytes of its record
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _page() -> str:
    html = PAGE.read_text(encoding="utf-8")
    if not missing_vendor_files(*EDITOR_FILES):
        return html
    # One element a line in the page: the editor's are left out, the textarea stays.
    return "\n".join(line for line in html.splitlines() if _VENDOR_MARK not in line) + "\n"


@router.get("/", include_in_schema=False)
async def playground(service: ServiceDep) -> HTMLResponse:
    if not service.settings.playground:
        raise NotFoundError("not found")
    return HTMLResponse(_page(), headers=_HEADERS)
