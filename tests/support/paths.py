"""Where the repository's files are, for tests that read them."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CLUSTER", "REPO", "SCRIPTS", "TEST_DATA"]

REPO = Path(__file__).resolve().parents[2]
"""The repository's root."""
CLUSTER = REPO / "cluster"
"""The deployment's manifests, Serve config and monitoring files."""
SCRIPTS = REPO / "scripts"
TEST_DATA = REPO / "tests" / "data"
"""The corpus and the schemas the tests check against."""
