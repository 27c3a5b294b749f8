"""``exec-agent serve`` ends its sessions when it stops: each interpreter on its host, and each
row (``terminated_reason: shutdown``), after the application drained. The whole command in a
subprocess (scripts/serve_process.py), embedded: SQLite and a Ray of its own."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from serve_app.db import Database
from serve_app.db.models import LiveSession
from tests.support.api import auth
from tests.support.scripts import load_script

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SESSION_ENV = {"SESSIONS_PER_HOST": "4", "SESSION_RESERVED_MEMORY_MB": "16"}


def test_a_drained_serve_ends_every_session(tmp_path: Path) -> None:
    serve_process = load_script("serve_process")
    service = serve_process.ServeProcess(tmp_path, slots=1, extra_env=SESSION_ENV)
    try:
        service.start()
        key = service.create_key("sessions")
        with httpx.Client(base_url=service.url, headers=auth(key), timeout=120) as client:
            created = client.post("/v1/sessions", json={"runtime": "minimal"})
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
            called = client.post(f"/v1/sessions/{sid}/executions", json={"code": "x = 1"})
            assert called.status_code == 200, called.text
            sessions = client.get("/health/ready").json()["checks"]["sessions"]
            assert sessions["ok"] and sessions["active"] == 1, sessions
        assert service.stop() == 0, service.log_tail()
        assert "ended 1 sessions" in service.log_path.read_text()
    finally:
        service.stop()
        service.kill_group()
    database = Database.from_url(f"sqlite:///{service.database_path}")
    try:
        with database.session() as session:
            row = session.get(LiveSession, uuid.UUID(sid))
        assert row is not None
        assert (str(row.status), str(row.terminated_reason)) == ("terminated", "shutdown")
    finally:
        database.dispose()
