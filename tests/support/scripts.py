"""The scripts of ``scripts/``, loaded as modules (``scripts/`` is not a package)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from types import ModuleType

from tests.support.paths import SCRIPTS

__all__ = ["load_script"]


@functools.cache
def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as module ``<name>_script``, loaded once by path.

    The module is registered in ``sys.modules``: dataclasses look their module up while
    being built.
    """
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
