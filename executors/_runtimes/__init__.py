"""Runtimes: the Python environments programs run in (API.md, "Runtimes").

A runtime is the sandbox's interpreter plus a directory of packages mounted read-only into the
sandbox. ``minimal`` has none (the standard library alone). Every other runtime's distributions
are pinned in ``<name>.txt`` beside this module; ``scripts/setup`` (and the image) install them
with ``--no-deps`` into ``<runtimes_dir>/<name>/site-packages`` and write the pins' digest to
``<runtimes_dir>/<name>/pins.sha256`` last, so a half-built runtime is never taken for one.

Usage::

    runtime = RUNTIMES["scientific"]
    runtime.site_packages(default_runtimes_dir())   # where its packages are, once installed
    runtime_catalog(default="scientific")            # what GET /v1/runtimes lists
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from executors._errors import RuntimeNotInstalledError

__all__ = [
    "MINIMAL",
    "RUNTIMES",
    "SCIENTIFIC",
    "Runtime",
    "RuntimeInfo",
    "check_runtime",
    "default_runtimes_dir",
    "runtime_catalog",
]

MINIMAL = "minimal"
SCIENTIFIC = "scientific"
PINS_DIR = Path(__file__).parent
STAMP = "pins.sha256"


@dataclass(frozen=True)
class Runtime:
    """One runtime: its name, the modules its zygote imports before any job, and the
    environment its programs get on top of the sandbox's own (never anything secret)."""

    name: str
    preload: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def pins(self) -> Path | None:
        """The file pinning this runtime's distributions (None: the standard library alone)."""
        path = PINS_DIR / f"{self.name}.txt"
        return path if path.is_file() else None

    def packages(self) -> dict[str, str]:
        """Distribution name → version, as pinned."""
        return _read_pins(self.pins) if self.pins is not None else {}

    def site_packages(self, runtimes_dir: str | Path) -> Path | None:
        """The installed packages' directory; raises :class:`RuntimeNotInstalledError` when it is
        missing or was built from other pins. None for a runtime without packages."""
        if self.pins is None:
            return None
        root = Path(runtimes_dir).resolve() / self.name
        stamp = root / STAMP
        want = hashlib.sha256(self.pins.read_bytes()).hexdigest()
        if not stamp.is_file() or stamp.read_text().strip() != want:
            raise RuntimeNotInstalledError(self.name, str(root))
        return root / "site-packages"


RUNTIMES: Mapping[str, Runtime] = {
    MINIMAL: Runtime(MINIMAL),
    SCIENTIFIC: Runtime(
        SCIENTIFIC,
        # What most programs import first. Each module preloaded makes every job's fork dearer
        # (the zygote's page tables grow with it: measured 1 ms for the standard library, 9.5 ms
        # with numpy, pandas and pyplot, 14 ms with scipy's linalg, optimize and stats as well),
        # so the rest (sympy, sklearn, networkx, scipy.stats...) load on demand, from .pyc files.
        preload=("numpy", "pandas", "matplotlib", "matplotlib.pyplot", "PIL.Image", "scipy"),
        env={
            # BLAS and OpenMP pools start their threads at import: one thread keeps the zygote
            # forkable (it must be single-threaded) and a job's CPU its own to spend.
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": "/tmp/matplotlib",  # noqa: S108 - the job's own tmpfs, nobody else's
        },
    ),
}


def check_runtime(name: str) -> str:
    """``name`` if it names a runtime, else ``ValueError`` listing them (never echoing
    ``name``, which a request may make anything, of any length)."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime: one of {', '.join(RUNTIMES)}")
    return name


class RuntimeInfo(BaseModel):
    """One item of ``GET /v1/runtimes``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    python_version: str = Field(description="The sandbox interpreter's version, e.g. 3.11.7.")
    packages: dict[str, str] = Field(description="Distribution name → pinned version.")
    preloaded: list[str] = Field(description="Modules imported before the program starts.")
    default: bool = Field(description="Whether requests naming no runtime get this one.")


def runtime_catalog(default: str, python: str | None = None) -> list[RuntimeInfo]:
    """Every runtime, as ``GET /v1/runtimes`` lists them (``default`` flagged); ``python``:
    the sandbox's interpreter (default: this process's, which it is unless configured)."""
    version = platform.python_version() if python is None else python_version(python)
    return [
        RuntimeInfo(
            name=runtime.name,
            python_version=version,
            packages=runtime.packages(),
            preloaded=list(runtime.preload),
            default=runtime.name == default,
        )
        for runtime in RUNTIMES.values()
    ]


def default_runtimes_dir() -> str:
    """``RUNTIMES_DIR`` where it is set (the image sets it: the service's settings, a Ray Data
    mapper's local pool and ``exec-agent run`` then agree), else ``.runtimes/`` of the checkout
    this package runs from, where ``scripts/setup`` builds them."""
    return os.environ.get("RUNTIMES_DIR") or str(Path(__file__).resolve().parents[2] / ".runtimes")


@cache
def python_version(python: str) -> str:
    """The version of the interpreter at ``python`` (asked once)."""
    argv = [python, "-I", "-S", "-c", "import platform; print(platform.python_version())"]
    return subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


@cache
def _read_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip()] = version.strip()
    return pins
