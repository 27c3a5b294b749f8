"""The import policy (``ALLOWED_IMPORTS`` / ``DENIED_IMPORTS``): which modules a request's code may
import, decided from its source text alone, before anything runs.

This is a policy on what users may run, not a security boundary: a static look at the source
cannot see imports built at run time (``__import__("o" + "s")``, ``exec``, ``eval``, pickles,
``sys.modules`` tricks), and the sandbox, which holds whatever the program does, is the
boundary. What the analysis finds, as top-level module names:

- ``import a.b.c`` and ``import a.b as c``: ``a``;
- ``from a.b import c``: ``a``;
- ``__import__("a.b")``, ``importlib.import_module("a.b")``, ``import_module("a")`` (any callee
  spelt ``__import__`` or ``import_module``, called with a string literal): ``a``;
  ``import_module(".b", "a")`` (relative, with a literal package): ``a``;
- anywhere in the source: inside functions, classes, conditionals, ``try`` blocks.

Relative imports (``from . import x``, ``from .m import y``) name no top-level module and are
not checked: the program runs as a script (``__main__``), where they cannot import anything
outside the request's own files. Files the request ships whose names end in ``.py`` are
analysed like the code; their top-level names (``helper.py``: ``helper``; ``pkg/m.py``: ``pkg``)
are the request's own modules, which an allow-list admits unless they shadow a standard-library
name. A deny-list applies to every name, the request's own files included.

Source that does not parse is not refused here: the sandbox reports its ``SyntaxError`` (or
runs it, if the sandbox's interpreter is newer and accepts it; then its imports were not
checked).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from serve_app.errors import PolicyViolationError

__all__ = ["ImportPolicy", "imported_modules", "local_modules"]

_IMPORT_FUNCTIONS = frozenset({"__import__", "import_module"})
_STDLIB = frozenset(sys.stdlib_module_names)


def imported_modules(source: str | bytes) -> frozenset[str]:
    """The top-level modules ``source`` imports statically (empty if it does not parse); bytes
    are decoded as Python decodes a source file (UTF-8, or its coding declaration)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return frozenset()
    found: set[str] = set()
    for node in ast.walk(tree):  # iterative: deep nesting cannot overflow the stack here
        if isinstance(node, ast.Import):
            found.update(_top(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(_top(node.module))
        elif isinstance(node, ast.Call):
            name = _dynamic_import(node)
            if name:
                found.add(name)
    return frozenset(found)


def local_modules(files: Mapping[str, str | bytes]) -> frozenset[str]:
    """The top-level module names the request's own ``files`` provide."""
    names = set()
    for path in files:
        parts = [part for part in path.replace("\\", "/").split("/") if part not in ("", ".")]
        if not parts:
            continue
        if len(parts) == 1:
            if parts[0].endswith(".py"):
                names.add(parts[0].removesuffix(".py"))
        elif parts[-1].endswith(".py"):
            names.add(parts[0])
    return frozenset(name for name in names if name.isidentifier())


def _top(dotted: str) -> str:
    return dotted.partition(".")[0]


def _dynamic_import(call: ast.Call) -> str | None:
    """``a`` for ``__import__("a.b")`` / ``import_module("a.b")`` / ``import_module(".b", "a")``."""
    callee = call.func
    if isinstance(callee, ast.Name):
        name = callee.id
    elif isinstance(callee, ast.Attribute):
        name = callee.attr
    else:
        return None
    if name not in _IMPORT_FUNCTIONS:
        return None
    target = _literal(call.args[0]) if call.args else _literal_keyword(call, "name")
    if target is None:
        return None
    if target.startswith("."):
        if name != "import_module":
            return None  # __import__'s level is a separate argument; "." names are invalid
        package = _literal(call.args[1]) if len(call.args) > 1 else None
        package = package or _literal_keyword(call, "package")
        return _top(package) if package and not package.startswith(".") else None
    return _top(target) or None


def _literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _literal_keyword(call: ast.Call, keyword: str) -> str | None:
    for item in call.keywords:
        if item.arg == keyword:
            return _literal(item.value)
    return None


@dataclass(frozen=True, slots=True)
class ImportPolicy:
    """``allowed``: if not empty, the only modules that may be imported (besides the request's
    own files); ``denied``: modules that may never be imported."""

    allowed: frozenset[str] = frozenset()
    denied: frozenset[str] = frozenset()

    @classmethod
    def of(cls, allowed: Iterable[str], denied: Iterable[str]) -> ImportPolicy:
        return cls(frozenset(allowed), frozenset(denied))

    @property
    def active(self) -> bool:
        """Whether the policy restricts anything (if not, no source needs parsing)."""
        return bool(self.allowed or self.denied)

    def violations(self, modules: Iterable[str], local: frozenset[str] = frozenset()) -> list[str]:
        """The modules of ``modules`` the policy refuses, sorted."""
        own = local - _STDLIB
        return sorted(
            module
            for module in set(modules)
            if module in self.denied
            or (self.allowed and module not in self.allowed and module not in own)
        )

    def check(
        self, sources: Iterable[str | None], files: Mapping[str, str | bytes] | None = None
    ) -> None:
        """Raise :class:`PolicyViolationError` naming every refused module ``sources`` (and
        the ``.py`` files among ``files``) import statically."""
        if not self.active:
            return
        files = files or {}
        texts: list[str | bytes] = [text for text in sources if text]
        texts += [text for path, text in files.items() if path.endswith(".py")]
        modules: set[str] = set()
        for text in texts:
            modules |= imported_modules(text)
        refused = self.violations(modules, local_modules(files))
        if refused:
            raise PolicyViolationError(
                "the code imports modules outside the import policy: " + ", ".join(refused),
                refused,
            )
