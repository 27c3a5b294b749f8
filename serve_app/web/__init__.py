"""The service's pages and their files: what ``/static/`` serves.

    static/             the pages' own files (the playground, the documentation's start-up)
    static/vendor/      third-party assets (Swagger UI, CodeMirror), unpacked at set-up time by
                        ``scripts/vendor-web-assets`` from pinned npm packages; not in git

Nothing here is fetched at run time: the pages work on a machine without internet access.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["STATIC_DIR", "STATIC_ROUTE", "VENDOR_DIR", "missing_vendor_files"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
STATIC_ROUTE = "/static"
"""Where :data:`STATIC_DIR` is served: ``/static/vendor/codemirror/lib/codemirror.js``."""


def missing_vendor_files(*relative: str) -> list[str]:
    """Which of the vendored files ``relative`` (to :data:`VENDOR_DIR`) are not there: a
    machine set up without ``scripts/vendor-web-assets``."""
    return [name for name in relative if not (VENDOR_DIR / name).is_file()]
