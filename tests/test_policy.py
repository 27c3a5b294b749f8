"""The import policy: static analysis of imports, the policy's decisions, its settings, the
service's check (refusal audited, nothing stored), and the upstream request-id mode of the edge."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from serve_app.api import ExecutionCreate, RequestBounds, validate_body
from serve_app.db import Database, keys
from serve_app.db.models import AuditEvent, Execution
from serve_app.errors import PolicyViolationError
from serve_app.http import ExecutionService
from serve_app.policy import ImportPolicy, imported_modules, local_modules
from serve_app.settings import Settings
from tests.support.paths import REPO
from tests.support.settings import migrated_sqlite_settings

# --- the analysis


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import os", {"os"}),
        ("import os.path as p, sys", {"os", "sys"}),
        ("import xml.etree.ElementTree as ET", {"xml"}),
        ("from os import path as p", {"os"}),
        ("from concurrent.futures import ThreadPoolExecutor", {"concurrent"}),
        ("from . import sibling", set()),
        ("from .pkg import thing", set()),
        ("from .. import up", set()),
        ("def f():\n    class C:\n        import socket\n", {"socket"}),
        ("try:\n    import ctypes\nexcept ImportError:\n    pass\n", {"ctypes"}),
        ("if False:\n    from subprocess import run\n", {"subprocess"}),
        ("lambda: __import__('socket')", {"socket"}),
        ("__import__('os.path')", {"os"}),
        ("__import__(name='pty')", {"pty"}),
        ("import builtins\nbuiltins.__import__('socket')", {"builtins", "socket"}),
        ("import importlib\nimportlib.import_module('ctypes.util')", {"importlib", "ctypes"}),
        ("from importlib import import_module as im\nimport_module('mmap')", {"importlib", "mmap"}),
        ("import importlib\nimportlib.import_module('.x', 'signal')", {"importlib", "signal"}),
        ("import importlib\nimportlib.import_module('.x', package='pty')", {"importlib", "pty"}),
        ("import importlib\nimportlib.import_module('.x')", {"importlib"}),
        ("__import__('.x')", set()),
        ("__import__(''.join(['o', 's']))", set()),  # built at run time: not static
        ("__import__(name)", set()),
        ("exec('import os')", set()),
        ("x = 'import os'  # import sys", set()),
        ("import os\ndef broken(:\n", set()),  # does not parse: not refused here
        ("print(1)", set()),
        ("", set()),
    ],
)
def test_imported_modules(source: str, expected: set[str]) -> None:
    assert imported_modules(source) == expected


def test_deeply_nested_or_odd_sources_never_raise() -> None:
    assert imported_modules("(" * 10_000 + ")" * 10_000) == set()
    assert imported_modules("import os\x00") == set()
    deep = "import a0\n" + "".join(
        " " * i + f"if x{i}:\n" + " " * (i + 1) + f"import m{i}\n" for i in range(90)
    )
    assert {"a0", "m0", "m89"} <= imported_modules(deep)


def test_local_modules() -> None:
    files = {"helper.py": "", "pkg/__init__.py": "", "./util.py": "", "data.txt": "", "a-b.py": ""}
    assert local_modules(files) == {"helper", "pkg", "util"}


# --- the policy


def test_an_empty_policy_restricts_nothing() -> None:
    policy = ImportPolicy()
    assert not policy.active
    policy.check(["import socket, ctypes"])


def test_a_deny_list_names_every_denied_module() -> None:
    policy = ImportPolicy.of([], ["socket", "ctypes"])
    policy.check(["import os", "import math"])
    with pytest.raises(PolicyViolationError) as refused:
        policy.check(["import math\nimport socket", "from ctypes import CDLL"])
    assert refused.value.modules == ("ctypes", "socket")
    assert "ctypes, socket" in str(refused.value)


def test_an_allow_list_admits_only_its_modules_and_the_requests_own_files() -> None:
    policy = ImportPolicy.of(["math", "json"], [])
    policy.check(["import math, json.decoder"])
    with pytest.raises(PolicyViolationError) as refused:
        policy.check(["import math", "import os"])
    assert refused.value.modules == ("os",)
    # The request's own modules are admitted, and their code is checked too.
    policy.check(["import helper"], {"helper.py": "import math"})
    with pytest.raises(PolicyViolationError) as nested:
        policy.check(["import helper"], {"helper.py": "import subprocess"})
    assert nested.value.modules == ("subprocess",)
    # ... but a file cannot admit a standard-library name by shadowing it.
    with pytest.raises(PolicyViolationError):
        policy.check(["import socket"], {"socket.py": ""})


def test_a_deny_list_applies_to_the_requests_own_files_too() -> None:
    policy = ImportPolicy.of([], ["socket"])
    with pytest.raises(PolicyViolationError):
        policy.check(["import socket"], {"socket.py": ""})
    policy.check(["print(1)"], {"notes.txt": "import socket"})  # not Python: not analysed


def test_binary_python_files_are_read_as_python_reads_them() -> None:
    policy = ImportPolicy.of([], ["socket"])
    for source in (
        b"import socket\n",
        "# coding: latin-1\nx = '\xe9'\nimport socket\n".encode("latin-1"),
    ):
        with pytest.raises(PolicyViolationError):
            policy.check(["import helper"], {"helper.py": source})
    policy.check(["print(1)"], {"data.bin": b"import socket"})  # not Python: not analysed
    policy.check(
        ["print(1)"], {"helper.py": b"\xff\xfe not source"}
    )  # does not parse: the run says


# --- settings


def test_policy_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_IMPORTS", "math, json,re")
    monkeypatch.setenv("DENIED_IMPORTS", '["socket", "ctypes"]')
    settings = Settings()
    assert settings.allowed_imports == ["json", "math", "re"]
    assert settings.import_policy() == ImportPolicy.of(["json", "math", "re"], ["ctypes", "socket"])


def test_policy_settings_default_to_no_restriction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLOWED_IMPORTS", raising=False)
    monkeypatch.delenv("DENIED_IMPORTS", raising=False)
    settings = Settings(_env_file=None)
    assert not settings.import_policy().active


@pytest.mark.parametrize(
    ("allowed", "denied", "problem"),
    [
        (["os"], ["os", "socket"], "must not share a module: os"),
        (["os.path"], [], "top-level module names"),
        ([], ["two words"], "top-level module names"),
        ([], ["../x"], "top-level module names"),
    ],
)
def test_policy_settings_are_checked(allowed: list[str], denied: list[str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem.replace(".", r"\.")):
        Settings(allowed_imports=allowed, denied_imports=denied)


def test_env_example_documents_the_policy() -> None:
    text = (REPO / ".env.example").read_text()
    assert "\nALLOWED_IMPORTS=\n" in text and "\nDENIED_IMPORTS=\n" in text


# --- the service: refused before anything is stored or run, and audited


class NoExecutor:
    """An executor handle that must never be called."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the executor was reached ({name})")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ExecutionService]:
    from serve_app.ratelimit import build_rate_limiter

    settings = migrated_sqlite_settings(tmp_path, denied_imports=["socket", "ctypes"])
    database = Database.from_settings(settings)
    yield ExecutionService(settings, database, build_rate_limiter(settings), NoExecutor())
    database.dispose()


def test_the_service_refuses_before_storing_and_audits(service: ExecutionService) -> None:
    with service.database.session() as session:
        key = keys.create_key(session, service.settings.api_key_secret, "policy-unit").row
    code = textwrap.dedent(
        """
        import math
        def sneaky():
            from socket import socket
        """
    )
    body = validate_body(
        ExecutionCreate,
        {"code": code, "files": {"lib.py": "import ctypes"}, "wait": True},
        RequestBounds.from_settings(service.settings),
    )

    async def attempt() -> PolicyViolationError:
        with pytest.raises(PolicyViolationError) as refused:
            await service.create(key, body)
        await asyncio.gather(*service._audit_tasks)
        return refused.value

    refused = asyncio.run(attempt())
    assert refused.modules == ("ctypes", "socket")
    with service.database.session() as session:
        assert session.scalar(select(func.count()).select_from(Execution)) == 0
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "policy_refused")
        ).all()
    assert [(e.kind, e.key_name, e.details) for e in events] == [
        ("policy_refused", "policy-unit", {"modules": ["ctypes", "socket"]})
    ]


def test_authenticated_keys_are_trusted_for_a_few_seconds_only(
    service: ExecutionService,
) -> None:
    from serve_app.errors import UnauthorizedError
    from serve_app.http.service import AUTH_CACHE_TTL_S

    secret = service.settings.api_key_secret
    with service.database.session() as session:
        presented = keys.create_key(session, secret, "cached").plaintext
    now = [1000.0]
    service._clock = lambda: now[0]

    async def authenticate() -> str:
        return (await service.authenticate(presented)).name

    assert asyncio.run(authenticate()) == "cached"
    assert list(service._auth_cache) == [keys.hash_key(presented, secret)]  # never plaintext
    with service.database.session() as session:
        keys.revoke_key(session, "cached")
    now[0] += AUTH_CACHE_TTL_S / 2
    assert asyncio.run(authenticate()) == "cached"  # within the bound: still trusted
    now[0] += AUTH_CACHE_TTL_S
    with pytest.raises(UnauthorizedError):
        asyncio.run(authenticate())  # past it: the revocation holds
    with pytest.raises(UnauthorizedError):
        wrong = presented[:-1] + ("x" if presented[-1] != "x" else "y")
        asyncio.run(service.authenticate(wrong))  # a wrong key is never cached


def test_a_failed_audit_write_is_logged_not_raised(
    service: ExecutionService, caplog: pytest.LogCaptureFixture
) -> None:
    from serve_app.db import audit

    service.database.dispose()
    service.database = Database.from_settings(
        Settings(
            _env_file=None,
            database_url="sqlite:////nonexistent-dir/x/audit.db",
        )
    )

    async def refuse() -> None:
        service.audit(audit.AuditKind.AUTH_FAILED, source_address="192.0.2.1")
        await asyncio.gather(*service._audit_tasks)

    asyncio.run(refuse())
    assert "audit event auth_failed not stored" in caplog.text


# --- the edge behind Serve's RequestIdMiddleware (the composition the proxy runs), no Ray


@pytest.mark.parametrize("upstream", [False, True])
def test_one_request_id_header_with_or_without_serve(upstream: bool) -> None:
    import httpx
    from fastapi import FastAPI
    from ray.serve._private.http_util import RequestIdMiddleware

    from serve_app.api import current_request_id, install_edge

    app = FastAPI()
    install_edge(app, Settings(_env_file=None), upstream_request_id=upstream)

    @app.get("/id")
    async def show() -> dict[str, str | None]:
        return {"id": current_request_id()}

    outer: Any = RequestIdMiddleware(app) if upstream else app

    async def get(headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as http:
            return await http.get("/id", headers=headers)

    sane = asyncio.run(get({"X-Request-ID": "client-7"}))
    assert sane.headers.get_list("x-request-id") == ["client-7"] == [sane.json()["id"]]
    fresh = asyncio.run(get({}))
    [value] = fresh.headers.get_list("x-request-id")
    assert value == fresh.json()["id"]
    odd = asyncio.run(get({"X-Request-ID": "a b"}))
    assert len(odd.headers.get_list("x-request-id")) == 1
    assert odd.json()["id"] != "a b"
