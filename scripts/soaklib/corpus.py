"""The adversarial corpus the soak sends (tests/data/security_corpus.json, its programs): each
entry with the statuses its ``expect`` names, the breach markers, and the loopback listeners
its network probes aim at."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from serve_process import REPO_ROOT

CORPUS_PATH = REPO_ROOT / "tests" / "data" / "security_corpus.json"
BREACH = re.compile(r"(?m)^(CONNECTED|OPEN |ATTACHED|PWNED-next-run)|EXISTS-from-previous-run")
"""Markers corpus programs print only if they got through the sandbox."""

STATUSES = {
    "ok",
    "nonzero_exit",
    "crashed",
    "timeout",
    "memory_limit",
    "output_limit",
    "internal_error",
}
"""The statuses of a finished execution (each one terminal), as the API names them."""
CORPUS_WORDS = {"runtime_error": "crashed"}
"""The corpus' status words that the API names otherwise (tests/data/security_corpus.README)."""
API_WINS = {"huge_exception_message": {"output_limit"}}
"""Where the API's status table overrides the corpus (tests/support/corpus_checks.py says why)."""
STATUS_WORDS = re.compile(
    r"(?<!never )status=([a-z_]+)((?:\s*(?:/|\bor\b)\s*[a-z_]+)*)", re.IGNORECASE
)


@dataclass(frozen=True)
class CorpusEntry:
    name: str
    code: str
    statuses: frozenset[str] | None
    """The statuses its ``expect`` names (None: it names none; any but internal_error)."""


def expected_statuses(name: str, expect: str) -> frozenset[str] | None:
    """The API statuses an entry's ``expect`` text names (``status=a or b``, ``status=a/b``)."""
    if name in API_WINS:
        return frozenset(API_WINS[name])
    found: set[str] = set()
    for first, rest in STATUS_WORDS.findall(expect):
        words = [first, *re.findall(r"[a-z_]+", rest.replace(" or ", " "))]
        for word in words:
            word = CORPUS_WORDS.get(word.lower(), word.lower())
            if word in STATUSES and word != "internal_error":
                found.add(word)
    return frozenset(found) or None


def load_corpus(path: Path = CORPUS_PATH) -> list[CorpusEntry]:
    """The corpus' programs (its ``http`` entries are client scripts, not programs; its
    ``sessions`` entries are steps in live sessions, tests/test_sessions_corpus.py)."""
    entries = json.loads(path.read_text(encoding="utf-8"))
    return [
        CorpusEntry(e["name"], e["code"], expected_statuses(e["name"], e["expect"]))
        for e in entries
        if e["category"] not in ("http", "sessions")  # sessions: several calls each
    ]


class Listeners:
    """The loopback listeners the corpus' network probes aim at (HOST_PORT, HOST_PORT6,
    HOST_UDP_PORT): reachable only from the host, which is the point."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self.ports: dict[str, int] = {}
        self.ports["HOST_PORT"] = self._open(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1")
        with contextlib.suppress(OSError):
            self.ports["HOST_PORT6"] = self._open(socket.AF_INET6, socket.SOCK_STREAM, "::1")
        self.ports["HOST_UDP_PORT"] = self._open(socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1")

    def _open(self, family: int, kind: int, host: str) -> int:
        sock = socket.socket(family, kind)
        sock.bind((host, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        self._sockets.append(sock)
        port: int = sock.getsockname()[1]
        return port

    def fill(self, code: str) -> str:
        # HOST_PORT6 first: it holds HOST_PORT.
        for name in sorted(self.ports, key=len, reverse=True):
            code = code.replace(name, str(self.ports[name]))
        return code

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
