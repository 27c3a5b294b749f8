"""The canary secret (invariant S of tests/data/security_corpus.README.md): planted where the
service keeps its own secrets, it must never show in a record."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Canary", "planted_canary"]


@dataclass(frozen=True)
class Canary:
    """A secret planted where the service keeps its own (invariant S): never in a record."""

    token: str
    home_file: Path

    @property
    def database_url(self) -> str:
        return f"postgresql://exec_agent:{self.token}@127.0.0.1:5432/exec_agent"

    @contextlib.contextmanager
    def planted(self) -> Iterator[None]:
        """The service's database secrets in the environment, as when it starts its pools.

        Only for the pool's start (when slots are spawned): the rest of the suite keeps its
        own database settings.
        """
        saved = {name: os.environ.get(name) for name in ("DATABASE_URL", "PGPASSWORD")}
        os.environ["DATABASE_URL"] = self.database_url
        os.environ["PGPASSWORD"] = self.token
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@contextlib.contextmanager
def planted_canary() -> Iterator[Canary]:
    """A new canary secret in the environment (``CANARY_SECRET``) and in a file in $HOME,
    both removed at the end."""
    token = f"canary-{secrets.token_hex(16)}"
    home_file = Path.home() / f".exec-agent-canary-{token[-12:]}"
    home_file.write_text(f"password={token}\n")
    saved = os.environ.get("CANARY_SECRET")
    os.environ["CANARY_SECRET"] = token
    try:
        yield Canary(token, home_file)
    finally:
        home_file.unlink(missing_ok=True)
        if saved is None:
            os.environ.pop("CANARY_SECRET", None)
        else:
            os.environ["CANARY_SECRET"] = saved
