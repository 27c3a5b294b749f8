"""The ``exec-agent`` command line, run in-process as a test sees it."""

from __future__ import annotations

import pytest

from serve_app.cli import main

__all__ = ["run_cli"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``exec-agent argv...``: its exit status, and what it wrote to stdout and stderr."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err
