"""Examples shown to users, read back from where they are shown: a module docstring's usage
example and the README's fenced blocks, so that tests run exactly what a reader copies."""

from __future__ import annotations

import re
import textwrap

from tests.support.paths import REPO

__all__ = ["README", "docstring_example", "readme_blocks", "readme_section_block"]

README = REPO / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def docstring_example(doc: str | None) -> str:
    """The first literal block (``::`` then indented lines) of docstring ``doc``, dedented."""
    block = (doc or "").split("::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip("\n") + "\n"


def readme_blocks(text: str | None = None) -> list[tuple[str, str]]:
    """Every fenced block of the README (or of ``text``): its language and its body."""
    source = README.read_text(encoding="utf-8") if text is None else text
    return [(match.group(1), match.group(2)) for match in _FENCE.finditer(source)]


def readme_section_block(heading: str, language: str) -> str:
    """The first ``language`` block of the README's section ``## heading``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return next(body for lang, body in readme_blocks(section) if lang == language)
