"""A Python for sandbox slots that run without bubblewrap, straight from the host."""

from __future__ import annotations

import os
import subprocess

__all__ = ["direct_mode_runtime", "reachable_interpreter"]


def reachable_interpreter() -> str | None:
    """A Python >= 3.11 that any uid can run, for slots without bubblewrap (or None).

    Without bubblewrap a slot's zygote runs straight from the host as the slot's uid, so
    an interpreter under a closed directory (e.g. pyenv's under /root) cannot serve.
    """
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        path = os.path.realpath(candidate)
        if not os.path.exists(path):
            continue
        parents = [os.path.dirname(path)]
        while parents[-1] != "/":
            parents.append(os.path.dirname(parents[-1]))
        if any(not os.stat(p).st_mode & 0o001 for p in [path, *parents]):
            continue
        check = [path, "-c", "import sys; sys.exit(sys.version_info < (3, 11))"]
        if subprocess.run(check, check=False, capture_output=True).returncode == 0:
            return path
    return None


def direct_mode_runtime(python: str) -> str:
    """The runtime a pool on ``python`` can preload: ``scientific`` when ``python`` is the
    version the runtimes were built for (this interpreter's), else ``minimal`` (a Debian
    ``/usr/bin/python3`` 3.11 cannot import packages built for 3.12)."""
    import sys

    check = [python, "-c", f"import sys; sys.exit(sys.version_info[:2] != {sys.version_info[:2]})"]
    same = subprocess.run(check, check=False, capture_output=True).returncode == 0
    return "scientific" if same else "minimal"
