"""An artifact as a download (``GET /v1/executions/{id}/artifacts/{path}``, API.md "Artifacts").

The bytes are the program's: whatever they claim to be, a browser must neither render them in
the API's origin nor guess another type. So every answer is an attachment, under
``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy: sandbox`` (no script, no
same-origin access even if opened). A file name may hold anything a Linux name can (quotes, CR,
LF, non-ASCII): it reaches the header only percent-encoded (RFC 6266 ``filename*=UTF-8''...``),
beside a plain ASCII ``filename`` for old clients, so it can never end or add a header. The media
type (the engine's guess from the name) is used only if it is a plain ``type/subtype``.

The route's ``{path:artifact_path}`` (:class:`ArtifactPathConvertor`) takes any path, line
breaks included: Starlette's ``path`` stops at one, which would make such a file unreachable.

Usage::

    headers = download_headers(artifact)   # Content-Type, Content-Disposition, nosniff, CSP
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import quote

from starlette.convertors import Convertor, register_url_convertor

from executors import Artifact

__all__ = [
    "ARTIFACT_PATH",
    "FALLBACK_MEDIA_TYPE",
    "ArtifactPathConvertor",
    "content_disposition",
    "download_headers",
]

ARTIFACT_PATH = "artifact_path"
"""The name of :class:`ArtifactPathConvertor` in route templates."""

FALLBACK_MEDIA_TYPE = "application/octet-stream"
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9._-]")
_FALLBACK_NAME = "artifact"


class ArtifactPathConvertor(Convertor[str]):
    """The rest of the path, whatever it holds (``path``'s ``.*`` stops at a line break)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor(ARTIFACT_PATH, ArtifactPathConvertor())


def content_disposition(path: str) -> str:
    """``attachment`` named after the last part of ``path``: an ASCII stand-in (anything but
    letters, digits, ``.``, ``_`` and ``-`` made ``_``) and the exact name, percent-encoded."""
    name = PurePosixPath(path).name or _FALLBACK_NAME
    plain = _UNSAFE_ASCII.sub("_", name).lstrip(".") or _FALLBACK_NAME
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='', errors='replace')}"


def download_headers(artifact: Artifact) -> dict[str, str]:
    """The headers of an artifact's download."""
    media_type = artifact.media_type.lower()
    return {
        "Content-Type": media_type if _MEDIA_TYPE.fullmatch(media_type) else FALLBACK_MEDIA_TYPE,
        "Content-Disposition": content_disposition(artifact.path),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
