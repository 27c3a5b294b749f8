"""The HTTP service under stress and failure: one Serve deployment (ingress + executor).

Unlike ``test_http_api.py`` (SQLite, the shared Redis), this module's service stores in a
private PostgreSQL server and limits through a private ``redis-server``, each on a free loopback
port (``tests/support/private_servers.py``), which the tests stop and start again; the shared servers
are never touched. The executors' queue is small
(``EXECUTOR_MAX_QUEUED_REQUESTS=2`` beside 2 slots), so a burst meets back-pressure.

In order: the PostgreSQL path (create, read, list, idempotency); back-pressure (503
``overloaded`` with ``Retry-After``, every admitted run terminal and stored once); Redis going
down and coming back (fail-open, readiness degraded then recovered); PostgreSQL going down
under running executions (their results answered, then stored when it is back; new requests
503 ``unavailable``); executions a dead replica left behind taken over; a client that
disconnects during a ``wait: true`` run.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

from executors import ExecutionRecord, ExecutionRequest
from serve_app.db import batches, executions, instances
from serve_app.db.models import ApiKey, Batch, BatchStatus, Execution, ServiceInstance
from serve_app.http.service import AUTH_CACHE_TTL_S
from tests.support.api import RECORD_FIELDS, auth, error_code, run
from tests.support.corpus import CORPUS, ENGINE_ENTRIES, host_ports, program, request_fields
from tests.support.corpus_checks import CHECKS
from tests.support.polling import eventually
from tests.support.ports import free_port
from tests.support.private_servers import (
    REDIS_SERVER,
    PrivatePostgres,
    PrivateRedis,
    postgres_bin_dir,
)
from tests.support.service import DeployedService, deployed_service, service_settings
from tests.support.statuses import TERMINAL

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.slow]

APP_NAME = "exec-agent-http-resilience-test"
SECRET = SecretStr("http-resilience-test-api-key-secret-0123456789")
SLOTS = 2
QUEUED = 2
BURST = 12
SLEEPER = "import time\ntime.sleep(2)\nprint('slept')"
HEARTBEAT_S = 0.2
STALE_AFTER_S = 1.0


# --- the service


@dataclass
class Server(DeployedService):
    redis: PrivateRedis
    postgres: PrivatePostgres
    key: str = ""


@pytest.fixture(scope="module")
def server(ray_session: None) -> Iterator[Server]:
    if REDIS_SERVER is None or postgres_bin_dir() is None:
        pytest.fail("redis-server and PostgreSQL's binaries are needed (scripts/setup)")
    with contextlib.ExitStack() as stack:
        postgres = PrivatePostgres(free_port())
        stack.callback(postgres.remove)
        postgres.start()
        database_url = postgres.url
        redis = PrivateRedis(free_port())
        redis.start()
        stack.callback(redis.stop)
        settings = service_settings(
            database_url,
            SECRET,
            redis_url=redis.url,
            max_concurrent_per_key=64,
            max_concurrent_executions=SLOTS,
            executor_max_queued_requests=QUEUED,
            instance_heartbeat_interval_s=HEARTBEAT_S,
            instance_stale_after_s=STALE_AFTER_S,
        )
        database = stack.enter_context(deployed_service(settings, APP_NAME))
        fixture = Server(database, settings, redis, postgres)
        fixture.key = fixture.new_key("main")
        yield fixture


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


# --- 1. PostgreSQL


def test_the_service_runs_on_postgresql(server: Server, client: httpx.Client) -> None:
    # The details (the backend here) are for a caller with a key.
    ready = client.get("/health/ready", headers=auth(server.key)).json()
    assert ready["checks"]["database"]["ok"], ready
    assert ready["checks"]["database"]["backend"] == "postgresql"
    assert ready["checks"]["redis"]["ok"], ready
    with server.database.session() as session:
        assert session.connection().dialect.name == "postgresql"


def test_run_read_and_list_on_postgresql(server: Server, client: httpx.Client) -> None:
    key = server.new_key("pg-runner")
    response = run(client, key, "print('from postgres')")
    assert response.status_code == 200, response.text
    record = response.json()
    assert set(record) == RECORD_FIELDS
    assert (record["status"], record["exit_code"], record["stdout"]) == (
        "ok",
        0,
        "from postgres\n",
    )
    assert response.headers["location"] == f"/v1/executions/{record['id']}"
    again = client.get(f"/v1/executions/{record['id']}", headers=auth(key))
    assert (again.status_code, again.json()) == (200, record)
    rows = server.stored("pg-runner")
    assert [(str(row.id), str(row.status)) for row in rows] == [(record["id"], "ok")]

    background = run(client, key, "print('later')", wait=False)
    assert background.status_code == 202
    late_id = background.json()["id"]
    done = client.get(f"/v1/executions/{late_id}?wait_s=30", headers=auth(key)).json()
    assert (done["status"], done["stdout"]) == ("ok", "later\n")

    first = client.get("/v1/executions?limit=1", headers=auth(key)).json()
    assert [item["id"] for item in first["items"]] == [late_id]
    assert first["next_cursor"]
    second = client.get(
        "/v1/executions", params={"limit": 1, "cursor": first["next_cursor"]}, headers=auth(key)
    ).json()
    assert [item["id"] for item in second["items"]] == [record["id"]]
    assert second["next_cursor"] is None
    stranger = client.get(f"/v1/executions/{record['id']}", headers=auth(server.key))
    assert (stranger.status_code, error_code(stranger)) == (404, "not_found")


def test_idempotency_on_postgresql(server: Server, client: httpx.Client) -> None:
    key = server.new_key("pg-idempotent")
    headers = {**auth(key), "Idempotency-Key": "pg-order-7"}
    body = {"code": "print('once')"}
    first = client.post("/v1/executions", json=body, headers=headers)
    second = client.post("/v1/executions", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(server.stored("pg-idempotent")) == 1
    other = client.post("/v1/executions", json={"code": "print(2)"}, headers=headers)
    assert (other.status_code, error_code(other)) == (409, "conflict")
    assert len(server.stored("pg-idempotent")) == 1


# --- the request id through Serve's proxy


def test_every_answer_carries_one_request_id(server: Server, client: httpx.Client) -> None:
    """Serve's proxy appends its own ``X-Request-ID``; the app must not send a second one,
    and a client id that is not sane is replaced before Serve echoes it."""
    plain = client.get("/health")
    assert len(plain.headers.get_list("x-request-id")) == 1, plain.headers.raw
    sane = client.get("/health", headers={"X-Request-ID": "client-id-1"})
    assert sane.headers.get_list("x-request-id") == ["client-id-1"]
    missing = client.get("/v1/executions/nope", headers={**auth(server.key), "X-Request-ID": "r-2"})
    assert missing.status_code == 404
    assert missing.headers.get_list("x-request-id") == ["r-2"]
    assert missing.json()["error"]["request_id"] == "r-2"
    for insane in ("x" * 500, "has space", "<script>"):
        replaced = client.get(
            "/v1/executions/nope", headers={**auth(server.key), "X-Request-ID": insane}
        )
        ids = replaced.headers.get_list("x-request-id")
        assert len(ids) == 1 and ids[0] != insane, ids
        assert replaced.json()["error"]["request_id"] == ids[0]
    twice = client.get("/health", headers=[("X-Request-ID", "a-1"), ("X-Request-ID", "b-2")])
    assert len(twice.headers.get_list("x-request-id")) == 1
    assert twice.headers["x-request-id"] not in {"a-1", "b-2"}


# --- 2. back-pressure


def test_a_burst_beyond_the_queue_is_refused_with_503(server: Server) -> None:
    key = server.new_key("burst")

    def one(_: int) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            response = run(http, key, SLEEPER)
        return response, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        answers = list(pool.map(one, range(BURST)))

    refused = [(r, s) for r, s in answers if r.status_code == 503]
    admitted = [r for r, _ in answers if r.status_code != 503]
    assert refused, f"{BURST} runs at once on {SLOTS} slots + {QUEUED} queued: none refused"
    assert len(admitted) >= SLOTS, [r.status_code for r, _ in answers]
    for response, seconds in refused:
        body = response.json()
        assert set(body) == {"error"}
        assert body["error"]["code"] == "overloaded"
        assert body["error"]["message"]
        assert response.headers.get_list("x-request-id") == [body["error"]["request_id"]]
        assert int(response.headers["retry-after"]) >= 1
        assert "Traceback" not in response.text
        assert seconds < 10, "a refusal should not wait for the runs ahead of it"
    for response in admitted:
        assert response.status_code == 200, response.text
        record = response.json()
        assert record["status"] in TERMINAL
        assert (record["status"], record["stdout"]) == ("ok", "slept\n"), record
    # Only admitted runs are stored, each once, terminal.
    rows = server.stored("burst")
    assert sorted(str(row.id) for row in rows) == sorted(r.json()["id"] for r in admitted)
    assert {str(row.status) for row in rows} <= TERMINAL

    # Afterwards the service is healthy and runs a normal request.
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/health").status_code == 200
        ready = http.get("/health/ready").json()
        assert ready["checks"]["executors"]["ok"], ready
        after = run(http, key, "print('after the burst')")
        assert after.status_code == 200, after.text
        assert after.json()["stdout"] == "after the burst\n"


# --- 3. Redis down


def test_redis_down_fails_open_and_readiness_recovers(server: Server, client: httpx.Client) -> None:
    key = server.new_key("redis-outage")
    assert run(client, key, "print(1)").status_code == 200
    server.redis.stop()
    try:
        for n in range(3):
            response = run(client, key, f"print({n})")
            assert response.status_code == 200, response.text
            assert response.json()["stdout"] == f"{n}\n"
        listed = client.get("/v1/executions", headers=auth(key))
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["items"]) == 4

        def degraded() -> httpx.Response | None:  # readiness is up to a second old
            ready = client.get("/health/ready")
            return ready if ready.json()["status"] == "degraded" else None

        ready = eventually(degraded, 5, "readiness sees Redis gone")
        body = ready.json()
        assert (ready.status_code, body["status"]) == (503, "degraded"), body
        assert body["checks"]["redis"]["ok"] is False
        assert body["checks"]["database"]["ok"] and body["checks"]["executors"]["ok"]
        assert str(server.redis.port) not in ready.text  # no internal address leaks
    finally:
        server.redis.start()

    def redis_ok() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get("/health/ready").json()
        return body if body["checks"]["redis"]["ok"] else None

    body = eventually(redis_ok, 15, "readiness sees Redis again")
    everything_ok = all(check["ok"] for check in body["checks"].values())
    assert body["status"] == ("ready" if everything_ok else "degraded")
    response = run(client, key, "print('back')")
    assert response.status_code == 200, response.text


# --- 4. PostgreSQL down


def test_database_outage_loses_no_accepted_result(server: Server, client: httpx.Client) -> None:
    key = server.new_key("pg-outage")
    slow = "import time\ntime.sleep(1.5)\nprint('done')"
    background = run(client, key, slow, wait=False)
    assert background.status_code == 202, background.text

    def waited(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            return run(http, key, slow)

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = pool.map(waited, range(2))
        time.sleep(0.7)  # accepted and running in the executors
        server.postgres.stop()
        try:
            answered = list(answers)
            for response in answered:  # finished while the database was down
                assert response.status_code == 200, response.text
                assert (response.json()["status"], response.json()["stdout"]) == ("ok", "done\n")
            time.sleep(AUTH_CACHE_TTL_S)  # past the cached key: each request needs the database
            refused = run(client, key, "print(1)")
            assert (refused.status_code, error_code(refused)) == (503, "unavailable")
            assert int(refused.headers["retry-after"]) >= 1
            assert str(server.postgres.port) not in refused.text
            read = client.get(f"/v1/executions/{background.json()['id']}", headers=auth(key))
            assert (read.status_code, error_code(read)) == (503, "unavailable")
            ready = client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["status"] == "unavailable"
            assert ready.json()["checks"]["database"]["ok"] is False
            assert client.get("/health").status_code == 200
        finally:
            server.postgres.start()

    def stored_as_answered() -> bool:
        records = [
            client.get(f"/v1/executions/{r.json()['id']}", headers=auth(key)) for r in answered
        ]
        return all(
            r.status_code == 200 and r.json() == a.json()
            for r, a in zip(records, answered, strict=True)
        )

    eventually(stored_as_answered, 40, "each answered result is stored as answered")
    late = client.get(
        f"/v1/executions/{background.json()['id']}?wait_s=30", headers=auth(key)
    ).json()
    assert (late["status"], late["stdout"]) == ("ok", "done\n")
    rows = server.stored("pg-outage")
    assert len(rows) == 3, "the refused request left no row"
    assert {str(row.status) for row in rows} == {"ok"}
    eventually(
        lambda: client.get("/health/ready").json()["checks"]["database"]["ok"],
        15,
        "readiness sees the database again",
    )
    assert run(client, key, "print('back')").json()["stdout"] == "back\n"


# --- 5. executions a dead replica left behind


def test_a_dead_instances_executions_are_taken_over(server: Server, client: httpx.Client) -> None:
    key = server.new_key("orphans")
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    with server.database.session() as session:
        key_id = session.scalar(select(ApiKey.id).where(ApiKey.name == "orphans"))
        assert key_id is not None
        instances.heartbeat(session, "dead-replica", long_ago)
        limits = server.settings.default_limits()
        request = ExecutionRequest(code="print('resumed')", limits=limits)
        queued = executions.insert_execution(session, key_id, request, owner="dead-replica")
        running = executions.insert_execution(
            session, key_id, request, owner="dead-replica", running=True
        )
        for row in (queued, running):
            row.created_at = long_ago
        items = [request.model_copy(update={"code": f"print({n})"}) for n in range(3)]
        orphaned_batch = batches.insert_batch(session, key_id, items, owner="dead-replica")
        session.flush()
        session.execute(
            update(Execution)
            .where(Execution.batch_id == orphaned_batch.batch.id)
            .values(created_at=long_ago)
        )

    resumed = client.get(f"/v1/executions/{queued.id}?wait_s=30", headers=auth(key)).json()
    lost = client.get(f"/v1/executions/{running.id}?wait_s=30", headers=auth(key)).json()

    assert (resumed["status"], resumed["stdout"]) == ("ok", "resumed\n"), resumed
    assert lost["status"] == "internal_error", lost
    assert (lost["exit_code"], lost["stdout"]) == (None, "")
    finished = client.get(
        f"/v1/batches/{orphaned_batch.batch.id}?wait_s=30", headers=auth(key)
    ).json()
    assert (finished["status"], finished["done"]) == ("done", 3), finished
    assert [item["stdout"] for item in finished["items"]] == ["0\n", "1\n", "2\n"]
    with server.database.session() as session:
        stored = session.get(Batch, orphaned_batch.batch.id)
        assert stored is not None and stored.status is BatchStatus.DONE
    with server.database.session() as session:
        left = session.scalars(select(ServiceInstance.id)).all()
    assert "dead-replica" not in left, "a dead instance owning nothing is forgotten"


# --- 7. the adversarial corpus through the API (a sample: one entry of each kind)

CORPUS_SAMPLE = sorted(
    {CORPUS[name]["category"]: name for name in reversed(ENGINE_ENTRIES)}.values()
)


def test_a_sample_of_the_corpus_meets_its_expectations_through_a_batch(
    server: Server, client: httpx.Client
) -> None:
    key = server.new_key("corpus-sample")
    with host_ports() as ports:
        items = [{"code": program(name, ports), **request_fields(name)} for name in CORPUS_SAMPLE]
        created = client.post("/v1/batches", json={"items": items}, headers=auth(key))
        assert created.status_code == 202, created.text
        path = f"/v1/batches/{created.json()['id']}?wait_s=60"
        result = eventually(
            lambda: (
                (body := client.get(path, headers=auth(key)).json())["status"] == "done" and body
            ),
            180,
            "the corpus batch finishes",
        )
    unmet = []
    for name, record in zip(CORPUS_SAMPLE, result["items"], strict=True):
        try:
            CHECKS[name](ExecutionRecord.model_validate(record))
        except AssertionError as exc:
            unmet.append(f"{name}: {exc}")
    assert not unmet, "\n".join(unmet)
    assert client.get("/health/ready").json()["checks"]["executors"]["ok"]


# --- 6. a client that goes away


def test_a_client_that_disconnects_leaves_one_terminal_record(
    server: Server, client: httpx.Client
) -> None:
    key = server.new_key("impatient")
    code = "import time\ntime.sleep(3)\nprint('finished')"
    with (
        httpx.Client(base_url=server.url, timeout=1.0) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        run(impatient, key, code)

    def stored_terminal() -> list[Execution] | None:
        rows = server.stored("impatient")
        return rows if rows and all(str(row.status) in TERMINAL for row in rows) else None

    rows = eventually(stored_terminal, 30, "the abandoned run's record ends terminal")
    assert len(rows) == 1
    record = client.get(f"/v1/executions/{rows[0].id}", headers=auth(key)).json()
    # Today: Serve's proxy cancels the request, the ingress stores ``internal_error`` (no
    # output, no usage) and the executor call is cancelled; the sandboxed job itself runs to
    # its own limits and its result is dropped. ``ok`` would mean the finished result is kept.
    assert record["status"] in {"internal_error", "ok"}, record
    time.sleep(4)  # past the program's own end: nothing finishes it a second time
    again = client.get(f"/v1/executions/{rows[0].id}", headers=auth(key)).json()
    assert again == record
    assert len(server.stored("impatient")) == 1
    after = run(client, key, "print('still serving')")
    assert after.status_code == 200, after.text
