"""Sessions over HTTP (API.md, Sessions): one deployment per database backend, on the
session's Ray.

Real Ray Serve (ingress + executor), real session hosts (detached Ray actors, real sandboxes),
a temporary SQLite database, then a PostgreSQL schema of its own. A key per test keeps the per-key cap and the rate apart. The
hosts are shut down at the end (they outlive Serve's application: that is their point).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from serve_app.client import Client
from serve_app.db.models import Execution, LiveSession
from serve_app.errors import ApiErrorResponse, UnavailableError
from serve_app.http.service.sessions import PLACEMENT_RETRY_AFTER_S
from tests.support.api import auth, error_code
from tests.support.databases import DATABASE_BACKENDS, empty_database
from tests.support.service import DeployedService, deployed_service, service_settings

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

APP_NAME = "exec-agent-sessions-test"
SECRET = SecretStr("sessions-test-api-key-secret-0123456789abcdef")
CAP = 3
MAX_TTL_S = 600.0
_T = TypeVar("_T")


@dataclass
class Server(DeployedService):
    def session_row(self, session_id: str) -> LiveSession:
        with self.database.session() as session:
            row = session.get(LiveSession, uuid.UUID(session_id))
        assert row is not None
        return row

    def calls_stored(self, session_id: str) -> list[Execution]:
        with self.database.session() as session:
            query = select(Execution).where(Execution.session_id == uuid.UUID(session_id))
            return list(session.scalars(query))


@pytest.fixture(scope="module", params=DATABASE_BACKENDS)
def server(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    directory: Path = tmp_path_factory.mktemp("sessions")
    with empty_database(request.param, directory) as url:
        yield from _served(url)


def _served(url: str) -> Iterator[Server]:
    settings = service_settings(
        url,
        SECRET,
        max_sessions_per_key=CAP,
        session_max_ttl_s=MAX_TTL_S,
        session_idle_timeout_s=300.0,
        sessions_per_host=8,
        session_reserved_memory_mb=16,
        session_hosts_min=1,
        session_sweep_interval_s=0.5,
        session_placement_timeout_s=60.0,
    )
    try:
        with deployed_service(settings, APP_NAME) as database:
            yield Server(database, settings)
    finally:
        shut_down_hosts(settings)


def shut_down_hosts(settings: Any) -> None:
    from executors import SessionHosts

    asyncio.run(SessionHosts(settings.sandbox_config(), settings.session_host_options()).shutdown())


@pytest.fixture
def key(server: Server, request: pytest.FixtureRequest) -> str:
    return server.new_key(f"{request.node.originalname[:40]}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def create(client: httpx.Client, key: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/sessions", json=body, headers=auth(key))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/sessions/{created['id']}"
    return created


def call(client: httpx.Client, key: str, session_id: str, code: str, **body: Any) -> httpx.Response:
    return client.post(
        f"/v1/sessions/{session_id}/executions", json={"code": code, **body}, headers=auth(key)
    )


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


def eventually(check: Callable[[], _T | None], within_s: float, what: str) -> _T:
    deadline = time.monotonic() + within_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        time.sleep(0.2)


# --- state, results, records


def test_state_is_kept_across_calls_and_results_are_reprs(
    server: Server, client: httpx.Client, key: str
) -> None:
    session = create(client, key, runtime="minimal")
    sid = session["id"]
    assert session["status"] == "active" and session["terminated_reason"] is None
    assert session["runtime"] == "minimal" and session["idle_timeout_s"] == 300.0
    assert session["limits"]["memory_mb"] == server.settings.default_memory_mb
    assert ok(call(client, key, sid, "x = 1"))["result"] is None  # a statement
    second = ok(call(client, key, sid, "x + 1"))
    assert (second["status"], second["result"], second["session_id"]) == ("ok", "2", sid)
    assert ok(call(client, key, sid, "None"))["result"] is None
    assert ok(call(client, key, sid, "'a' * 3"))["result"] == "'aaa'"
    failed = ok(call(client, key, sid, "1 / 0"))
    assert failed["status"] == "nonzero_exit" and "ZeroDivisionError" in failed["stderr"]
    assert ok(call(client, key, sid, "print(x)"))["stdout"] == "1\n"  # it went on
    # Each call is an execution like any other, with its session and result.
    stored = client.get(f"/v1/executions/{second['id']}", headers=auth(key)).json()
    assert (stored["session_id"], stored["result"], stored["status"]) == (sid, "2", "ok")
    assert len(server.calls_stored(sid)) == 6
    assert client.get(f"/v1/sessions/{sid}", headers=auth(key)).json()["calls"] == 6


def test_sessions_share_nothing_and_another_keys_is_404(
    server: Server, client: httpx.Client, key: str
) -> None:
    mine, other = create(client, key)["id"], create(client, key)["id"]
    ok(call(client, key, mine, "secret = 42"))
    assert "NameError" in ok(call(client, key, other, "secret"))["stderr"]
    stranger = server.new_key(f"stranger-{uuid.uuid4().hex[:6]}")
    for response in (
        client.get(f"/v1/sessions/{mine}", headers=auth(stranger)),
        call(client, stranger, mine, "secret"),
        client.delete(f"/v1/sessions/{mine}", headers=auth(stranger)),
        client.get("/v1/sessions/not-a-uuid", headers=auth(key)),
    ):
        assert (response.status_code, error_code(response)) == (404, "not_found")
    assert client.get(f"/v1/sessions/{mine}", headers=auth(key)).json()["status"] == "active"
    bare = client.post("/v1/sessions", headers=auth(key))  # no body: every default
    assert bare.status_code == 201, bare.text
    client.delete(f"/v1/sessions/{bare.json()['id']}", headers=auth(key))
    anonymous = client.post("/v1/sessions", json={})
    assert (anonymous.status_code, error_code(anonymous)) == (401, "unauthorized")
    listed = client.get("/v1/sessions", headers=auth(stranger)).json()
    assert listed == {"items": [], "next_cursor": None}


def test_a_concurrent_call_is_409_and_leaves_no_execution(
    server: Server, client: httpx.Client, key: str
) -> None:
    sid = create(client, key)["id"]
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(call, client, key, sid, "import time; time.sleep(2); 'slept'")
        eventually(lambda: server.calls_stored(sid), 10, "the slow call is stored running")
        time.sleep(0.3)
        busy = call(client, key, sid, "1")
        assert (busy.status_code, error_code(busy)) == (409, "session_busy")
        assert ok(slow.result())["result"] == "'slept'"
    assert len(server.calls_stored(sid)) == 1  # the refused call left nothing
    assert ok(call(client, key, sid, "2"))["result"] == "2"


def test_a_calls_artifacts_come_back_with_it_and_download(client: httpx.Client, key: str) -> None:
    sid = create(client, key)["id"]
    first = ok(call(client, key, sid, "open('out/a.txt', 'w').write('one')"))
    assert [artifact["path"] for artifact in first["artifacts"]] == ["out/a.txt"]
    download = client.get(f"/v1/executions/{first['id']}/artifacts/out/a.txt", headers=auth(key))
    assert (download.status_code, download.content) == (200, b"one")
    # Each call starts with an empty out/: what a call left went with it.
    assert ok(call(client, key, sid, "import os; os.listdir('out')"))["result"] == "[]"


# --- the end of a session


def test_delete_ends_at_once_and_then_410(server: Server, client: httpx.Client, key: str) -> None:
    sid = create(client, key)["id"]
    ok(call(client, key, sid, "x = 1"))
    assert client.delete(f"/v1/sessions/{sid}", headers=auth(key)).status_code == 204
    assert client.delete(f"/v1/sessions/{sid}", headers=auth(key)).status_code == 204
    gone = call(client, key, sid, "x")
    assert (gone.status_code, error_code(gone)) == (410, "session_terminated")
    assert "deleted" in gone.json()["error"]["message"]
    read = client.get(f"/v1/sessions/{sid}", headers=auth(key)).json()
    assert (read["status"], read["terminated_reason"]) == ("terminated", "deleted")
    assert read["terminated_at"] is not None
    assert len(server.calls_stored(sid)) == 1


def test_sys_exit_ends_the_session_as_exited(client: httpx.Client, key: str) -> None:
    sid = create(client, key)["id"]
    record = ok(call(client, key, sid, "import sys; sys.exit(3)"))
    assert record["session_id"] == sid
    read = client.get(f"/v1/sessions/{sid}", headers=auth(key)).json()
    assert (read["status"], read["terminated_reason"]) == ("terminated", "exited")
    gone = call(client, key, sid, "1")
    assert (gone.status_code, error_code(gone)) == (410, "session_terminated")
    assert "exited" in gone.json()["error"]["message"]


def test_idle_sessions_are_reaped_and_reads_show_it(client: httpx.Client, key: str) -> None:
    sid = create(client, key, idle_timeout_s=1.0)["id"]
    read = eventually(
        lambda: (
            body
            if (body := client.get(f"/v1/sessions/{sid}", headers=auth(key)).json())["status"]
            == "terminated"
            else None
        ),
        15,
        "the idle session reads as ended",
    )
    assert read["terminated_reason"] == "idle"
    gone = call(client, key, sid, "1")
    assert (gone.status_code, error_code(gone)) == (410, "session_terminated")


def test_the_sweeper_records_reaping_without_a_read(
    server: Server, client: httpx.Client, key: str
) -> None:
    # A page never asks the hosts: only the replica's sweeper can have ended the row.
    sid = create(client, key, idle_timeout_s=1.0)["id"]

    def listed_ended() -> dict[str, Any] | None:
        items = client.get("/v1/sessions", headers=auth(key)).json()["items"]
        [item] = [item for item in items if item["id"] == sid]
        return item if item["status"] == "terminated" else None

    assert eventually(listed_ended, 15, "the sweeper ends the row")["terminated_reason"] == "idle"


def test_the_cap_is_429_and_ended_sessions_make_room(client: httpx.Client, key: str) -> None:
    made = [create(client, key)["id"] for _ in range(CAP)]
    refused = client.post("/v1/sessions", json={}, headers=auth(key))
    assert (refused.status_code, error_code(refused)) == (429, "session_limit")
    assert client.delete(f"/v1/sessions/{made[0]}", headers=auth(key)).status_code == 204
    made.append(create(client, key)["id"])
    # A session ended on its host (here: exited) stops counting before the next refusal.
    ok(call(client, key, made[1], "raise SystemExit"))
    made.append(create(client, key)["id"])
    page = client.get("/v1/sessions?limit=2", headers=auth(key)).json()
    assert [item["id"] for item in page["items"]] == [made[-1], made[-2]]
    rest = client.get(f"/v1/sessions?limit=10&cursor={page['next_cursor']}", headers=auth(key))
    assert [item["id"] for item in rest.json()["items"]] == list(reversed(made[:-2]))
    for sid in made:
        client.delete(f"/v1/sessions/{sid}", headers=auth(key))


@pytest.mark.parametrize(
    "body",
    [
        {"unknown": 1},
        {"runtime": "nope"},
        {"ttl_s": MAX_TTL_S + 1},
        {"idle_timeout_s": MAX_TTL_S + 1},
        {"idle_timeout_s": 0},
        {"ttl_s": -5},
        {"limits": {"memory_mb": 10**6}},
        {"limits": {"wall_timeout_s": 1}},  # a call's limit, not the session's
    ],
)
def test_invalid_bodies_are_422(client: httpx.Client, key: str, body: dict[str, Any]) -> None:
    response = client.post("/v1/sessions", json=body, headers=auth(key))
    assert (response.status_code, error_code(response)) == (422, "invalid_request"), response.text


def test_a_call_validates_its_body(client: httpx.Client, key: str) -> None:
    sid = create(client, key)["id"]
    for body in (
        {"code": "1", "limits": {"memory_mb": 8}},  # the session's cap, not the call's
        {"code": "1", "runtime": "minimal"},
        {"code": "1", "limits": {"wall_timeout_s": 10**6}},
        {"stdin": ""},
    ):
        response = client.post(f"/v1/sessions/{sid}/executions", json=body, headers=auth(key))
        assert (response.status_code, error_code(response)) == (422, "invalid_request")


def test_the_python_client(server: Server, key: str) -> None:
    with Client(server.url, key) as client:
        with client.create_session(runtime="minimal") as session:
            assert session.run("import math; r = 2").result is None
            assert session.run("math.pi * r").result == repr(3.141592653589793 * 2)
            assert session.run("input()", stdin="typed\n").result == "'typed'"
            assert session.refresh().calls == 3
            items, _ = client.sessions_page()
            assert session.id in {str(item.id) for item in items}
        with pytest.raises(ApiErrorResponse) as ended:
            session.run("1")
    assert (ended.value.http_status, ended.value.code) == (410, "session_terminated")


def test_readiness_lists_the_session_hosts(server: Server, client: httpx.Client, key: str) -> None:
    create(client, key)
    ready = client.get("/health/ready", headers=auth(key))
    assert "checks" in ready.json(), ready.text
    checks = ready.json()["checks"]
    sessions = checks["sessions"]
    assert sessions["ok"] and sessions["active"] >= 1, sessions
    assert sessions["hosts"] and {"name", "node_id", "active", "capacity"} <= set(
        sessions["hosts"][0]
    )


def test_a_session_no_node_can_take_is_503_and_not_kept(server: Server) -> None:
    # Hosts of a namespace of their own, on nodes with a label none has: never placed.
    import ray

    from executors import SessionHosts
    from serve_app.api import RequestBounds, SessionCreate, validate_body
    from serve_app.db import Database, keys
    from serve_app.http import ExecutionService
    from serve_app.ratelimit import build_rate_limiter

    settings = server.settings
    options = settings.session_host_options(label_selector={"exec-agent/nowhere": "x"})
    options = options.model_copy(
        update={"namespace": f"placement-{uuid.uuid4().hex[:8]}", "placement_timeout_s": 1.0}
    )
    hosts = SessionHosts(settings.sandbox_config(), options)
    with server.database.session() as session:
        api_key = keys.create_key(session, settings.api_key_secret, "placement").row
    body = validate_body(SessionCreate, {}, RequestBounds.from_settings(settings))

    async def refused() -> UnavailableError:
        database = Database.from_settings(settings)
        limiter = build_rate_limiter(settings)
        service = ExecutionService(settings, database, limiter, None, session_hosts=hosts)
        try:
            with pytest.raises(UnavailableError) as refusal:
                await service.create_session(api_key, body)
            return refusal.value
        finally:
            await service.aclose(1.0)
            for name in await hosts.host_names():  # the pending host (shutdown would wait on it)
                ray.kill(ray.get_actor(name, namespace=options.namespace))

    refusal = asyncio.run(refused())
    assert refusal.retry_after_s == PLACEMENT_RETRY_AFTER_S
    with server.database.session() as session:
        kept = session.scalars(select(LiveSession).where(LiveSession.key_id == api_key.id))
        assert list(kept) == []  # the reservation went with it: it counts against nothing


# --- losing processes: last, since the host's loss ends every session on it


def test_a_killed_ingress_replica_leaves_the_session_answering(
    server: Server, client: httpx.Client, key: str
) -> None:
    import ray

    sid = create(client, key)["id"]
    ok(call(client, key, sid, "kept = 'across replicas'"))
    [replica] = [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#ApiIngress#")
    ]
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)

    def answered() -> dict[str, Any] | None:
        try:
            response = call(client, key, sid, "kept")
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    record = eventually(answered, 90, "a new ingress replica answers the session's call")
    assert record["result"] == "'across replicas'"


def test_a_killed_host_ends_its_sessions_as_lost(
    server: Server, client: httpx.Client, key: str
) -> None:
    import ray

    sid = create(client, key)["id"]
    ok(call(client, key, sid, "x = 1"))
    host = server.session_row(sid).host
    assert host is not None
    ray.kill(ray.get_actor(host, namespace=server.settings.session_host_options().namespace))
    gone = call(client, key, sid, "x")
    assert (gone.status_code, error_code(gone)) == (410, "session_terminated")
    assert "lost" in gone.json()["error"]["message"]
    read = client.get(f"/v1/sessions/{sid}", headers=auth(key)).json()
    assert (read["status"], read["terminated_reason"]) == ("terminated", "lost")
    # A new session finds (or starts) another host.
    assert ok(call(client, key, create(client, key)["id"], "1 + 1"))["result"] == "2"
