"""``exec-agent run --out DIR``: a record's artifacts written as files under DIR.

An artifact ``out/plots/a.png`` becomes ``DIR/plots/a.png`` (directories made as needed). The
record may come from a server the caller does not control, so a path is written only if it
stays inside DIR: no absolute path, no ``..``, no part that is empty or ``.``, and no directory
on the way (nor the file itself) that resolves elsewhere (a symbolic link already in DIR). Anything else is refused,
named on stderr, and the rest still written.

Usage::

    refused = write_artifacts(record, Path("results"))   # the paths not written, and why
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from executors import ARTIFACTS_DIR, Artifact

__all__ = ["write_artifacts"]


def write_artifacts(record: Mapping[str, Any], directory: Path) -> list[str]:
    """Write every artifact of ``record`` (API form) under ``directory``; what could not be
    written, one line each (empty: all written)."""
    refused: list[str] = []
    for item in record.get("artifacts") or []:
        try:
            artifact = Artifact.model_validate(item)
            target = _target(directory, artifact.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            _inside(directory, target)  # again, once made: a link may be on the way
            target.write_bytes(artifact.content())
        except (ValidationError, ValueError, OSError) as exc:
            path = item.get("path") if isinstance(item, Mapping) else None
            refused.append(f"{path!r}: {exc}")
    return refused


def _target(directory: Path, path: str) -> Path:
    """Where ``path`` (``out/...``) goes under ``directory``; ``ValueError`` if it would leave."""
    parts = PurePosixPath(path).parts
    if parts[:1] == (ARTIFACTS_DIR,):
        parts = parts[1:]
    if (
        not parts
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ValueError("not a plain relative path: not written")
    target = directory.joinpath(*parts)
    _inside(directory, target)
    return target


def _inside(directory: Path, path: Path) -> None:
    """``ValueError`` unless ``path``, resolved as far as it exists, is inside ``directory``."""
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        raise ValueError(f"would be written outside {os.fspath(directory)}: not written")
