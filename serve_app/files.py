"""A request's files in their API form: a string is UTF-8 text, ``{"base64": ...}`` any bytes.

The engine takes ``path → str | bytes``; the API, the stored request (a JSON column) and the
cache's fingerprint hold the API form, which JSON can carry. Decoding is strict: the standard
alphabet, correct padding, nothing after it, no stray bits (what :func:`encode_base64` writes),
so one file has one encoding and a typo is a 422, not silently different bytes.

Usage::

    to_api({"a.txt": "hi", "b.bin": b"\\x00\\xff"})   # {"a.txt": "hi", "b.bin": {"base64": "AP8="}}
    from_api({"b.bin": {"base64": "AP8="}})           # {"b.bin": b"\\x00\\xff"}
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BASE64_KEY",
    "ApiFile",
    "decode_base64",
    "encode_base64",
    "file_from_api",
    "from_api",
    "to_api",
]

BASE64_KEY = "base64"
ApiFile = str | dict[str, str]
"""One file's content as the API and the database carry it."""


def encode_base64(content: bytes) -> str:
    """``content`` in standard base64, padded, on one line."""
    return binascii.b2a_base64(content, newline=False).decode("ascii")


def decode_base64(text: str) -> bytes:
    """The bytes ``text`` encodes; ``ValueError`` unless it is strict standard base64."""
    try:
        content = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (UnicodeEncodeError, binascii.Error):
        content = None
    # Unused low bits of the last character must be zero too ("AP9=" is not "AP8="): one
    # encoding per content, so equal files fingerprint alike.
    if content is None or encode_base64(content) != text:
        raise ValueError("must be standard base64 (A-Z a-z 0-9 + /, padded with =)")
    return content


def file_from_api(content: Any) -> str | bytes:
    """One file's content from its API form; ``ValueError`` for anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and set(content) == {BASE64_KEY}:
        encoded = content[BASE64_KEY]
        if isinstance(encoded, str):
            return decode_base64(encoded)
    raise ValueError('a file must be a string or {"base64": string}')


def from_api(files: Mapping[str, Any]) -> dict[str, str | bytes]:
    """Every file of ``files`` (API form) as the engine takes it."""
    return {path: file_from_api(content) for path, content in files.items()}


def to_api(files: Mapping[str, str | bytes]) -> dict[str, ApiFile]:
    """Every file of ``files`` in API form: text stays text, bytes become ``{"base64": ...}``."""
    return {
        path: content if isinstance(content, str) else {BASE64_KEY: encode_base64(content)}
        for path, content in files.items()
    }
