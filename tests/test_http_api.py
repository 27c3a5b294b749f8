"""The HTTP service end to end: one Serve deployment (ingress + executor) for the module.

Real Ray Serve with its HTTP proxy on a free loopback port, real sandboxes, a temporary SQLite
database, and the real Redis at 127.0.0.1:6379 when it answers (else the in-memory limiter).
Limiter keys are the API keys' random lookup ids, so runs never share rate state.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from executors import TERMINAL_STATUSES, ExecutionRecord
from serve_app.cli import main
from serve_app.client import Client
from serve_app.db.models import AuditEvent, Execution
from serve_app.errors import ApiErrorResponse
from tests.support.api import RECORD_FIELDS, auth, error_code, run
from tests.support.service import DeployedService, deployed_service, service_settings
from tests.support.shared_redis import REDIS_URL, shared_redis_answers

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

APP_NAME = "exec-agent-http-test"
SECRET = SecretStr("http-test-api-key-secret-0123456789abcdef")
MAX_BODY_BYTES = 64 * 1024
MAX_RECORD_BYTES = 256 * 1024


@dataclass
class Server(DeployedService):
    key: str = ""
    other_key: str = ""


@pytest.fixture(scope="module")
def server(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory: Path = tmp_path_factory.mktemp("http")
    settings = service_settings(
        f"sqlite:///{directory / 'api.db'}",
        SECRET,
        redis_url=REDIS_URL if shared_redis_answers() else None,
        max_body_bytes=MAX_BODY_BYTES,
        max_code_bytes=MAX_BODY_BYTES // 2,
        executor_max_queued_requests=8,
        denied_imports=["os", "socket"],
        max_record_bytes=MAX_RECORD_BYTES,
    )
    with deployed_service(settings, APP_NAME) as database:
        fixture = Server(database, settings)
        fixture.key = fixture.new_key("main")
        fixture.other_key = fixture.new_key("other")
        yield fixture


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


# --- health


def test_liveness_needs_no_key(client: httpx.Client) -> None:
    response = client.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert response.headers["x-request-id"]


def test_readiness_reports_every_check(server: Server, client: httpx.Client) -> None:
    response = client.get("/health/ready", headers=auth(server.key))
    body = response.json()
    checks = body["checks"]
    assert set(checks) == {
        "database",
        "redis",
        "executors",
        "sandbox",
        "disk",
        "memory",
        "sessions",
    }
    assert checks["database"]["ok"] and checks["executors"]["ok"]
    assert checks["executors"]["slots"] == 2
    assert "layers" in checks["sandbox"]
    everything_ok = all(check["ok"] for check in checks.values())
    assert (response.status_code, body["status"]) == (
        (200, "ready") if everything_ok else (503, "degraded")
    )
    # Without a key (Kubernetes' probes): the same status, each check's ok, no detail.
    anonymous = client.get("/health/ready")
    assert anonymous.status_code == response.status_code
    assert anonymous.json() == {
        "status": body["status"],
        "checks": {name: {"ok": check["ok"]} for name, check in checks.items()},
    }


# --- authentication


def test_keys_are_required_and_checked(server: Server, client: httpx.Client) -> None:
    body = {"code": "print(1)"}
    for headers in (
        {},
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {server.key}"},
        {"X-API-Key": server.key[:-1] + "x"},
        {"X-API-Key": "A" * 10_000},
    ):
        response = client.post("/v1/executions", json=body, headers=headers)
        assert response.status_code == 401, headers
        assert error_code(response) == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/executions").status_code == 401


# --- running


def test_a_synchronous_run_answers_the_record(server: Server, client: httpx.Client) -> None:
    response = run(client, server.key, "print('hi')")
    assert response.status_code == 200
    record = response.json()
    assert set(record) == RECORD_FIELDS
    ExecutionRecord.model_validate(record)
    assert (record["status"], record["exit_code"], record["stdout"]) == ("ok", 0, "hi\n")
    assert record["limits"]["memory_mb"] == 256
    assert response.headers["location"] == f"/v1/executions/{record['id']}"
    for name in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"):
        assert response.headers[name].isdigit()
    # Stored once, exactly as answered.
    with server.database.session() as session:
        count = session.scalar(select(func.count()).where(Execution.id == uuid.UUID(record["id"])))
    assert count == 1
    again = client.get(f"/v1/executions/{record['id']}", headers=auth(server.key))
    assert again.json() == record


def test_x_api_key_and_program_failures(server: Server, client: httpx.Client) -> None:
    response = client.post(
        "/v1/executions",
        json={"code": "import sys; sys.exit(3)", "limits": {"wall_timeout_s": 2}},
        headers={"X-API-Key": server.key},
    )
    record = response.json()
    assert (response.status_code, record["status"], record["exit_code"]) == (
        200,
        "nonzero_exit",
        3,
    )
    assert record["limits"]["wall_timeout_s"] == 2


def test_a_background_run_is_read_with_wait(server: Server, client: httpx.Client) -> None:
    response = run(client, server.key, "import time; time.sleep(0.3); print('late')", wait=False)
    assert response.status_code == 202
    queued = response.json()
    assert queued["status"] == "queued"
    assert response.headers["location"] == f"/v1/executions/{queued['id']}"
    done = client.get(f"/v1/executions/{queued['id']}?wait_s=30", headers=auth(server.key))
    record = done.json()
    assert (done.status_code, record["status"], record["stdout"]) == (200, "ok", "late\n")
    assert record["id"] == queued["id"]


def test_executions_are_listed_newest_first_by_pages(server: Server, client: httpx.Client) -> None:
    key = server.new_key("lister")
    ids = [run(client, key, f"print({n})").json()["id"] for n in range(3)]
    first = client.get("/v1/executions?limit=2", headers=auth(key)).json()
    assert [item["id"] for item in first["items"]] == ids[:0:-1]
    assert first["next_cursor"]
    second = client.get(
        "/v1/executions", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth(key)
    ).json()
    assert ([item["id"] for item in second["items"]], second["next_cursor"]) == ([ids[0]], None)
    assert client.get("/v1/executions?limit=0", headers=auth(key)).status_code == 422
    bad_cursor = client.get("/v1/executions?cursor=nonsense", headers=auth(key))
    assert bad_cursor.status_code == 422


def test_other_keys_and_malformed_ids_answer_404(server: Server, client: httpx.Client) -> None:
    mine = run(client, server.key, "print(1)").json()["id"]
    response = client.get(f"/v1/executions/{mine}", headers=auth(server.other_key))
    assert (response.status_code, error_code(response)) == (404, "not_found")
    assert response.headers["ratelimit-limit"]
    for bad in ("1", "1 OR 1=1", "00000000-0000-0000-0000-000000000001", "%00", "..%2f..%2fetc"):
        response = client.get(f"/v1/executions/{bad}", headers=auth(server.key))
        assert response.status_code == 404, bad
    listed = client.get("/v1/executions?limit=100", headers=auth(server.other_key)).json()
    assert mine not in {item["id"] for item in listed["items"]}


def test_wait_s_is_bounded(server: Server, client: httpx.Client) -> None:
    mine = run(client, server.key, "print(1)").json()["id"]
    for wait in ("61", "-1", "nan", "inf", "x"):
        response = client.get(f"/v1/executions/{mine}?wait_s={wait}", headers=auth(server.key))
        assert (response.status_code, error_code(response)) == (422, "invalid_request"), wait


def test_idempotency_key_replays_the_first_execution(server: Server, client: httpx.Client) -> None:
    key = server.new_key("idempotent")
    headers = {**auth(key), "Idempotency-Key": "order-42"}
    body = {"code": "print('once')"}
    first = client.post("/v1/executions", json=body, headers=headers)
    second = client.post("/v1/executions", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    with server.database.session() as session:
        count = session.scalar(select(func.count()).where(Execution.idempotency_key == "order-42"))
    assert count == 1
    listed = client.get("/v1/executions", headers=auth(key)).json()["items"]
    assert [item["id"] for item in listed] == [first.json()["id"]]
    other_body = client.post("/v1/executions", json={"code": "print(2)"}, headers=headers)
    assert (other_body.status_code, error_code(other_body)) == (409, "conflict")


def test_a_burst_is_rate_limited_per_key(server: Server, client: httpx.Client) -> None:
    limited, bystander = server.new_key("bursty", rate_limit_per_minute=3), server.new_key("calm")
    answers = [client.get("/v1/executions", headers=auth(limited)) for _ in range(5)]
    assert [answer.status_code for answer in answers[:3]] == [200, 200, 200]
    refused = answers[3]
    assert (refused.status_code, error_code(refused)) == (429, "rate_limited")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "3"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert answers[4].status_code == 429
    assert client.get("/v1/executions", headers=auth(bystander)).status_code == 200


# --- the HTTP entries of the security corpus, end to end


def test_malformed_json_is_400(server: Server, client: httpx.Client) -> None:
    response = client.post(
        "/v1/executions",
        content=b'{"code": "print(1)"',
        headers={**auth(server.key), "Content-Type": "application/json"},
    )
    assert (response.status_code, error_code(response)) == (400, "invalid_json")
    assert "Traceback" not in response.text


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e309"])
def test_non_finite_limits_are_422(server: Server, client: httpx.Client, literal: str) -> None:
    raw = '{"code": "print(1)", "limits": {"wall_timeout_s": ' + literal + "}}"
    response = client.post(
        "/v1/executions",
        content=raw.encode(),
        headers={**auth(server.key), "Content-Type": "application/json"},
    )
    assert (response.status_code, error_code(response)) == (422, "invalid_request")


def test_refusals_before_parsing(server: Server, client: httpx.Client) -> None:
    oversize = client.post(
        "/v1/executions",
        content=b'{"code": "' + b"x" * MAX_BODY_BYTES + b'"}',
        headers={**auth(server.key), "Content-Type": "application/json"},
    )
    assert (oversize.status_code, error_code(oversize)) == (413, "payload_too_large")
    text = client.post(
        "/v1/executions",
        content=b"print(1)",
        headers={**auth(server.key), "Content-Type": "text/plain"},
    )
    assert (text.status_code, error_code(text)) == (415, "unsupported_media_type")
    unknown = run(client, server.key, "print(1)", timeout=5)
    assert (unknown.status_code, error_code(unknown)) == (422, "invalid_request")
    escape = run(client, server.key, "print(1)", files={"../x": "y"})
    assert escape.status_code == 422
    over_max = run(client, server.key, "print(1)", limits={"memory_mb": 10**6})
    assert over_max.status_code == 422
    method = client.delete("/v1/executions", headers=auth(server.key))
    assert (method.status_code, error_code(method)) == (405, "method_not_allowed")


def test_every_stored_execution_is_terminal_once(server: Server, client: httpx.Client) -> None:
    key = server.new_key("finisher")
    ids = [run(client, key, "print(1)", wait=False).json()["id"] for _ in range(3)]
    records = [
        client.get(f"/v1/executions/{one}?wait_s=30", headers=auth(key)).json() for one in ids
    ]
    assert {record["status"] for record in records} == {"ok"}
    with server.database.session() as session:
        rows = session.scalars(select(Execution).where(Execution.id.in_(map(uuid.UUID, ids))))
        assert {row.status for row in rows} <= TERMINAL_STATUSES


# --- the import policy (DENIED_IMPORTS=os,socket in this deployment)


def audit_events(
    server: Server, kind: str, request_id: str, timeout_s: float = 10
) -> list[AuditEvent]:
    """The events of ``kind`` for ``request_id`` (written in the background: wait a little)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with server.database.session() as session:
            events = list(
                session.scalars(
                    select(AuditEvent).where(
                        AuditEvent.kind == kind, AuditEvent.request_id == request_id
                    )
                )
            )
        if events or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_a_denied_import_is_refused_before_anything_is_stored(
    server: Server, client: httpx.Client
) -> None:
    key = server.new_key("policy-denied")
    request_id = f"policy-{uuid.uuid4().hex}"
    response = client.post(
        "/v1/executions",
        json={"code": "import math\ndef f():\n    from os import path\n", "wait": True},
        headers={**auth(key), "X-Request-ID": request_id},
    )
    assert (response.status_code, error_code(response)) == (422, "policy_violation")
    assert response.json()["error"]["details"] == [{"module": "os"}]
    assert response.headers["ratelimit-limit"]
    background = run(client, key, "__import__('socket')", wait=False)
    assert (background.status_code, error_code(background)) == (422, "policy_violation")
    assert len(server.stored("policy-denied")) == 0
    [event] = audit_events(server, "policy_refused", request_id)
    assert (event.key_name, event.details) == ("policy-denied", {"modules": ["os"]})
    # Code that does not parse is the sandbox's to report.
    broken = run(client, key, "import os\ndef broken(:")
    assert (broken.status_code, broken.json()["status"]) == (200, "nonzero_exit")
    assert "SyntaxError" in broken.json()["stderr"]


def test_an_evaded_policy_still_meets_the_sandbox(server: Server, client: httpx.Client) -> None:
    code = """
o = __import__("".join(["o", "s"]))
s = __import__("".join(["soc", "ket"]))
print("os", o.getpid() > 0)
try:
    s.create_connection(("127.0.0.1", 5432), timeout=2).close()
    print("reached")
except OSError as exc:
    print("blocked", type(exc).__name__)
"""
    response = run(client, server.key, code)
    record = response.json()
    assert (response.status_code, record["status"]) == (200, "ok"), record
    assert record["stdout"].startswith("os True\nblocked ")
    assert "reached" not in record["stdout"]


# --- audit events of refusals


def test_refusals_are_audited(server: Server, client: httpx.Client) -> None:
    request_id = f"auth-{uuid.uuid4().hex}"
    refused = client.get(
        "/v1/executions", headers={"X-API-Key": "not-a-key", "X-Request-ID": request_id}
    )
    assert refused.status_code == 401
    [event] = audit_events(server, "auth_failed", request_id)
    assert event.key_name is None
    assert event.source_address == "127.0.0.1"
    assert event.details == {"reason": "unknown_or_revoked"}
    assert "not-a-key" not in str(event.details)
    missing_id = f"auth-{uuid.uuid4().hex}"
    assert client.get("/v1/executions", headers={"X-Request-ID": missing_id}).status_code == 401
    assert audit_events(server, "auth_failed", missing_id)[0].details == {"reason": "missing"}

    limited = server.new_key("audited-burst", rate_limit_per_minute=1)
    assert client.get("/v1/executions", headers=auth(limited)).status_code == 200
    limited_id = f"rate-{uuid.uuid4().hex}"
    answer = client.get("/v1/executions", headers={**auth(limited), "X-Request-ID": limited_id})
    assert answer.status_code == 429
    [event] = audit_events(server, "rate_limited", limited_id)
    assert (event.key_name, event.details["limit"]) == ("audited-burst", "rate")


# --- request ids: exactly one X-Request-ID, Serve's proxy included


def test_exactly_one_request_id_header(server: Server, client: httpx.Client) -> None:
    mine = client.get("/health", headers={"X-Request-ID": "client-id-42"})
    assert mine.headers.get_list("x-request-id") == ["client-id-42"]
    generated = client.get("/health")
    [value] = generated.headers.get_list("x-request-id")
    assert value
    error = client.get(
        "/v1/executions/nothing", headers={**auth(server.key), "X-Request-ID": "e-1"}
    )
    assert error.status_code == 404
    assert (
        error.headers.get_list("x-request-id") == ["e-1"] == [error.json()["error"]["request_id"]]
    )
    unsane = client.get("/v1/executions", headers={"X-Request-ID": "a b"})
    # Serve echoes a client's id as it came; there is still only one.
    assert len(unsane.headers.get_list("x-request-id")) == 1
    assert unsane.json()["error"]["request_id"] != "a b"


# --- batches


def batch(client: httpx.Client, key: str, items: list[dict[str, object]]) -> httpx.Response:
    return client.post("/v1/batches", json={"items": items}, headers=auth(key))


def test_a_batch_runs_every_item_in_request_order(server: Server, client: httpx.Client) -> None:
    key = server.new_key("batcher")
    items: list[dict[str, object]] = [
        {"code": "print('first')"},
        {"code": "raise SystemExit(3)"},
        {"code": "print(input()[::-1])", "stdin": "olleh"},
        {"code": "print(open('data.txt').read())", "files": {"data.txt": "from a file"}},
        {"code": "while True: pass", "limits": {"wall_timeout_s": 0.5, "cpu_time_s": 0.5}},
    ]
    created = batch(client, key, items)
    assert created.status_code == 202, created.text
    body = created.json()
    assert set(body) == {"id", "status", "total"}
    assert (body["status"], body["total"]) == ("queued", len(items))
    assert created.headers["location"] == f"/v1/batches/{body['id']}"

    done = client.get(f"/v1/batches/{body['id']}?wait_s=60", headers=auth(key))
    assert done.status_code == 200, done.text
    result = done.json()
    assert set(result) == {"id", "status", "total", "done", "items"}
    assert (result["id"], result["status"]) == (body["id"], "done")
    assert result["total"] == result["done"] == len(items)
    records = result["items"]
    assert all(set(record) == RECORD_FIELDS for record in records)
    assert [(r["status"], r["exit_code"]) for r in records] == [
        ("ok", 0),
        ("nonzero_exit", 3),
        ("ok", 0),
        ("ok", 0),
        ("timeout", None),
    ]
    assert [r["stdout"] for r in records[:4]] == ["first\n", "", "hello\n", "from a file\n"]
    # Each item is an execution of the key's own.
    alone = client.get(f"/v1/executions/{records[2]['id']}", headers=auth(key))
    assert alone.json() == records[2]


def test_batches_are_private_and_validated(server: Server, client: httpx.Client) -> None:
    key = server.new_key("batch-owner")
    created = batch(client, key, [{"code": "print(1)"}]).json()
    for path in (f"/v1/batches/{uuid.uuid4()}", "/v1/batches/not-a-uuid"):
        missing = client.get(path, headers=auth(key))
        assert (missing.status_code, error_code(missing)) == (404, "not_found")
    stranger = client.get(f"/v1/batches/{created['id']}", headers=auth(server.other_key))
    assert (stranger.status_code, error_code(stranger)) == (404, "not_found")
    assert client.get(f"/v1/batches/{created['id']}").status_code == 401

    for items in (
        [],
        [{"code": "print(1)", "wait": False}],  # an item is a request without `wait`
        [{"code": "print(1)", "surprise": 1}],
        [{"code": "print(1)"}] * 1001,  # MAX_BATCH_ITEMS
        [{"code": "print(1)", "limits": {"memory_mb": 10**6}}],
    ):
        refused = batch(client, key, items)
        assert (refused.status_code, error_code(refused)) == (422, "invalid_request"), items[:1]
    not_a_list = client.post("/v1/batches", json={"items": "x"}, headers=auth(key))
    assert not_a_list.status_code == 422
    policy = batch(client, key, [{"code": "print(1)"}, {"code": "import socket"}])
    assert (policy.status_code, error_code(policy)) == (422, "policy_violation")
    assert len(server.stored("batch-owner")) == 1  # the refused batches stored nothing


def test_a_larger_batch_completes(server: Server, client: httpx.Client) -> None:
    key = server.new_key("big-batch")
    items: list[dict[str, object]] = [{"code": f"print({n} * {n})"} for n in range(60)]
    created = batch(client, key, items).json()
    result = client.get(f"/v1/batches/{created['id']}?wait_s=60", headers=auth(key)).json()
    assert (result["status"], result["done"]) == ("done", 60)
    assert [r["stdout"] for r in result["items"]] == [f"{n * n}\n" for n in range(60)]


# --- the result cache (in-process or Redis, as the deployment has it)

RANDOM = "import random\nprint(random.random())"


def test_a_cached_result_is_reused_by_its_key_only(server: Server, client: httpx.Client) -> None:
    key = server.new_key("cacher")
    code = f"{RANDOM}\n# {uuid.uuid4()}"
    first = run(client, key, code, cache=True).json()
    second = run(client, key, code, cache=True)
    assert second.status_code == 200
    again = second.json()
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["cached_from"] == first["id"] and again["id"] != first["id"]
    assert again["stdout"] == first["stdout"]
    assert client.get(f"/v1/executions/{again['id']}", headers=auth(key)).json() == again
    fresh = run(client, key, code).json()  # without cache: runs again
    assert not fresh["cached"] and fresh["stdout"] != first["stdout"]
    other = run(client, server.other_key, code, cache=True).json()  # another key's cache
    assert not other["cached"] and other["stdout"] != first["stdout"]
    different_limits = run(client, key, code, cache=True, limits={"wall_timeout_s": 2}).json()
    assert not different_limits["cached"]
    background = run(client, key, code, cache=True, wait=False)
    assert background.status_code == 200  # a hit is finished at once
    assert background.json()["cached_from"] == first["id"]


def test_failures_of_the_service_are_never_cached(server: Server, client: httpx.Client) -> None:
    key = server.new_key("cache-failures")
    code = f"import sys\nsys.exit(4)\n# {uuid.uuid4()}"
    first = run(client, key, code, cache=True).json()
    assert first["status"] == "nonzero_exit"  # the program's own failure: cached
    assert run(client, key, code, cache=True).json()["cached_from"] == first["id"]


def test_identical_cached_items_of_a_batch_run_once(server: Server, client: httpx.Client) -> None:
    key = server.new_key("batch-cacher")
    code = f"{RANDOM}\n# {uuid.uuid4()}"
    items: list[dict[str, object]] = [{"code": code, "cache": True}] * 4 + [{"code": code}]
    created = batch(client, key, items).json()
    records = client.get(f"/v1/batches/{created['id']}?wait_s=60", headers=auth(key)).json()[
        "items"
    ]
    ran = [r for r in records[:4] if not r["cached"]]
    assert len(ran) == 1, records
    copies = [r for r in records[:4] if r["cached"]]
    assert {r["cached_from"] for r in copies} == {ran[0]["id"]}
    assert {r["stdout"] for r in records[:4]} == {ran[0]["stdout"]}
    assert not records[4]["cached"] and records[4]["stdout"] != ran[0]["stdout"]


# --- judged executions (API.md "Evaluation")

ADD = "def add(a, b):\n    return a + b\n"


def test_test_code_judges_the_program(server: Server, client: httpx.Client) -> None:
    key = server.new_key("judge")
    passing = run(client, key, ADD, test_code="assert add(2, 3) == 5").json()
    assert (passing["status"], passing["passed"]) == ("ok", True)
    assert "cases" not in passing
    failing = run(client, key, ADD, test_code="assert add(2, 2) == 5").json()
    assert (failing["status"], failing["passed"]) == ("nonzero_exit", False)
    assert "AssertionError" in failing["stderr"]
    plain = run(client, key, ADD).json()
    assert plain["passed"] is None
    stored = client.get(f"/v1/executions/{passing['id']}", headers=auth(key)).json()
    assert stored == passing


@pytest.mark.parametrize(
    "forgery",
    [
        "import sys\nsys.exit(0)",
        # This deployment denies `import os`: reach it through sys.modules instead.
        "import sys\nsys.modules['posix']._exit(0)",
        "print('passed: true')\nraise SystemExit",
        "import sys\nposix = sys.modules['posix']\nposix.kill(posix.getpid(), 9)",
        # The security review's: a C-level callable raises the harness's pass event, then exit 0.
        "import atexit, functools, sys\n"
        "sys.excepthook = functools.partial(sys.audit, 'exec_agent.test_passed')\n"
        "atexit.register(sys.modules['posix']._exit, 0)",
    ],
)
@pytest.mark.parametrize("judge", ["isolated", "in_process"])
def test_a_program_cannot_forge_a_pass(
    server: Server, client: httpx.Client, forgery: str, judge: str
) -> None:
    body = {"code": ADD + forgery, "test_code": "assert add(2, 3) == 6", "judge": judge}
    record = client.post("/v1/executions", json=body, headers=auth(server.other_key)).json()
    assert record["passed"] is False, record
    right = {**body, "test_code": "assert add(2, 3) == 5"}
    if "excepthook" in forgery:  # the same program passes a test it does pass
        answer = client.post("/v1/executions", json=right, headers=auth(server.other_key))
        assert answer.json()["passed"] is True, answer.text


def test_cases_judge_each_input(server: Server, client: httpx.Client) -> None:
    key = server.new_key("cases")
    cases = [
        {"stdin": "2 3\n", "expected_stdout": "5"},
        {"stdin": "10 -4\n", "expected_stdout": "6  \n\n"},  # trailing whitespace is ignored
        {"stdin": "1 1\n", "expected_stdout": "3"},
    ]
    code = "a, b = map(int, input().split())\nprint(a + b)"
    record = run(client, key, code, cases=cases).json()
    assert record["passed"] is False
    assert [case["passed"] for case in record["cases"]] == [True, True, False]
    assert [case["stdout"] for case in record["cases"]] == ["5\n", "6\n", "2\n"]
    assert all(case["status"] == "ok" for case in record["cases"])
    stored = client.get(f"/v1/executions/{record['id']}", headers=auth(key)).json()
    assert stored == record
    good = run(client, key, code, cases=cases[:2]).json()
    assert (good["status"], good["passed"]) == ("ok", True)
    too_many = run(client, key, code, cases=[cases[0]] * 101)
    assert (too_many.status_code, error_code(too_many)) == (422, "invalid_request")


def test_batches_judge_their_items(server: Server, client: httpx.Client) -> None:
    key = server.new_key("batch-judge")
    items: list[dict[str, object]] = [
        {"code": ADD, "test_code": "assert add(1, 1) == 2"},
        {"code": ADD, "test_code": "assert add(1, 1) == 3"},
        {"code": "print(input())", "cases": [{"stdin": "x", "expected_stdout": "x"}]},
        {"code": ADD},
    ]
    created = batch(client, key, items).json()
    records = client.get(f"/v1/batches/{created['id']}?wait_s=60", headers=auth(key)).json()[
        "items"
    ]
    assert [r["passed"] for r in records] == [True, False, True, None]
    assert records[2]["cases"][0]["passed"] is True


# --- what one request may cost (issue 10 item 3)


def test_a_batch_is_charged_one_allowance_per_item(server: Server, client: httpx.Client) -> None:
    key = server.new_key("batch-cost", rate_limit_per_minute=10)
    small = batch(client, key, [{"code": "print(1)"}] * 4)
    assert small.status_code == 202, small.text
    assert small.headers["ratelimit-remaining"] == "6"
    # More than is left: refused whole, with the time until it fits.
    refused = batch(client, key, [{"code": "print(1)"}] * 8)
    assert (refused.status_code, error_code(refused)) == (429, "rate_limited")
    assert int(refused.headers["retry-after"]) >= 1
    # Bigger than the key's whole burst: accepted from a rested key, then paid for.
    rested = server.new_key("batch-cost-big", rate_limit_per_minute=10)
    big = batch(client, rested, [{"code": "print(1)"}] * 12)
    assert big.status_code == 202, big.text
    after = client.get("/v1/executions", headers=auth(rested))
    assert (after.status_code, error_code(after)) == (429, "rate_limited")
    assert int(after.headers["retry-after"]) > 6  # 12 executions at 10 a minute
    assert len(server.stored("batch-cost")) == 4
    assert len(server.stored("batch-cost-big")) == 12


def test_a_records_outputs_are_cut_to_max_record_bytes(
    server: Server, client: httpx.Client
) -> None:
    """97 bytes of code and 4 cases made a record of 62.9 MB: every case keeps its output."""
    key = server.new_key("loud-cases")
    code = "import sys\nprint('o' * 200_000)\nprint('e' * 200_000, file=sys.stderr)"
    response = run(client, key, code, cases=[{"stdin": "", "expected_stdout": ""}] * 4)
    assert response.status_code == 200, response.text
    assert len(response.content) <= MAX_RECORD_BYTES
    record = response.json()
    assert record["status"] == "ok" and len(record["cases"]) == 4
    for case in record["cases"]:
        assert case["stdout_truncated"] and case["stderr_truncated"]
        assert case["stdout"].startswith("ooo") and case["stderr"].startswith("eee")
    stored = client.get(f"/v1/executions/{record['id']}", headers=auth(key))
    assert stored.json() == record


# --- runtimes and artifacts (API.md, "Runtimes" and "Artifacts")

SCIENTIFIC_PACKAGES = (
    "numpy",
    "pandas",
    "scipy",
    "matplotlib",
    "sympy",
    "scikit-learn",
    "networkx",
    "pillow",
)
WRITES_ARTIFACTS = """\
from pathlib import Path
Path('out/sub').mkdir(parents=True, exist_ok=True)
Path('out/x.csv').write_text('a,b\\n1,2\\n')
Path('out/sub/y.bin').write_bytes(bytes(range(256)))
print('written')
"""


def test_runtimes_are_listed(server: Server, client: httpx.Client) -> None:
    response = client.get("/v1/runtimes", headers=auth(server.key))
    assert response.status_code == 200, response.text
    items = {item["name"]: item for item in response.json()["items"]}
    assert {"minimal", "scientific"} <= set(items)
    assert [name for name, item in items.items() if item["default"]] == ["scientific"]
    for item in items.values():
        assert set(item) == {"name", "python_version", "packages", "preloaded", "default"}
        assert item["python_version"].count(".") == 2
    assert items["minimal"]["packages"] == {} and items["minimal"]["preloaded"] == []
    packages = items["scientific"]["packages"]
    for name in SCIENTIFIC_PACKAGES:
        assert packages[name][:1].isdigit(), (name, packages.get(name))  # a pinned version
    assert "numpy" in items["scientific"]["preloaded"]
    assert client.get("/v1/runtimes").status_code == 401


def test_a_record_names_the_runtime_it_ran_in(server: Server, client: httpx.Client) -> None:
    key = server.new_key("runtimes")
    probe = "import importlib.util\nprint(importlib.util.find_spec('numpy') is not None)"
    default = run(client, key, probe).json()
    minimal = run(client, key, probe, runtime="minimal").json()
    assert (default["runtime"], default["stdout"]) == ("scientific", "True\n")
    assert (minimal["runtime"], minimal["stdout"]) == ("minimal", "False\n")
    stored = {str(row.id): row.runtime for row in server.stored("runtimes")}
    assert stored == {default["id"]: "scientific", minimal["id"]: "minimal"}
    for runtime in ("nope", "", None, "Minimal"):
        refused = run(client, key, probe, runtime=runtime)
        assert (refused.status_code, error_code(refused)) == (422, "invalid_request")
        error = refused.json()["error"]
        assert set(error) == {"code", "message", "request_id", "details"}
        assert [detail["field"] for detail in error["details"]] == ["runtime"]
    assert len(server.stored("runtimes")) == 2  # the refused requests stored nothing


def test_a_binary_file_reaches_the_program_byte_for_byte(
    server: Server, client: httpx.Client
) -> None:
    key = server.new_key("binary-files")
    content = bytes(range(256)) + b"\x00\xff\r\n"
    encoded = base64.b64encode(content).decode()
    code = "import sys\nsys.stdout.write(open('blob.bin', 'rb').read().hex())"
    record = run(client, key, code, files={"blob.bin": {"base64": encoded}}).json()
    assert (record["status"], record["stdout"]) == ("ok", content.hex())
    [row] = server.stored("binary-files")
    assert row.files == {"blob.bin": {"base64": encoded}}  # stored in its API form
    for files in (
        {"blob.bin": {"base64": encoded[:-1]}},  # not base64 any more
        {"blob.bin": {"base64": encoded, "extra": ""}},
        {"out/blob.bin": "under out/, which every run starts empty"},
    ):
        refused = run(client, key, code, files=files)
        assert (refused.status_code, error_code(refused)) == (422, "invalid_request")
    items = [{"code": code, "files": {"blob.bin": {"base64": encoded}}, "runtime": "minimal"}]
    created = batch(client, key, items).json()
    done = client.get(f"/v1/batches/{created['id']}?wait_s=60", headers=auth(key)).json()
    [item] = done["items"]
    assert (item["stdout"], item["runtime"]) == (content.hex(), "minimal")


def test_artifacts_come_back_in_the_record_and_download(
    server: Server, client: httpx.Client
) -> None:
    key = server.new_key("artifacts")
    response = run(client, key, WRITES_ARTIFACTS, runtime="minimal")
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["status"] == "ok" and record["artifacts_truncated"] is False
    artifacts = {item["path"]: item for item in record["artifacts"]}
    assert list(artifacts) == ["out/sub/y.bin", "out/x.csv"]  # sorted by path
    assert artifacts["out/x.csv"]["size_bytes"] == 8
    assert artifacts["out/x.csv"]["media_type"] == "text/csv"
    assert base64.b64decode(artifacts["out/sub/y.bin"]["base64"]) == bytes(range(256))
    assert client.get(f"/v1/executions/{record['id']}", headers=auth(key)).json() == record
    [row] = server.stored("artifacts")
    assert [item["path"] for item in row.artifacts or []] == list(artifacts)

    url = f"/v1/executions/{record['id']}/artifacts/out/x.csv"
    download = client.get(url, headers=auth(key))
    assert download.status_code == 200, download.text
    assert download.content == b"a,b\n1,2\n"
    assert download.headers["content-type"] == "text/csv"
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"x.csv\"; filename*=UTF-8''x.csv"
    )
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-security-policy"] == "sandbox"
    nested = client.get(f"/v1/executions/{record['id']}/artifacts/out/sub/y.bin", headers=auth(key))
    assert nested.content == bytes(range(256))
    for path in ("out/absent.csv", "out/sub", "x.csv.bak"):
        missing = client.get(f"/v1/executions/{record['id']}/artifacts/{path}", headers=auth(key))
        assert (missing.status_code, error_code(missing)) == (404, "not_found")
    stranger = client.get(url, headers=auth(server.other_key))
    assert (stranger.status_code, error_code(stranger)) == (404, "not_found")


def test_a_figure_left_open_comes_back_as_a_png(server: Server, client: httpx.Client) -> None:
    key = server.new_key("figures")
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\n"
    record = run(client, key, code).json()
    assert record["status"] == "ok", record["stderr"]
    [figure] = record["artifacts"]
    assert (figure["path"], figure["media_type"]) == ("out/figure-1.png", "image/png")
    png = client.get(f"/v1/executions/{record['id']}/artifacts/{figure['path']}", headers=auth(key))
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_the_cache_tells_runtimes_and_binary_files_apart(
    server: Server, client: httpx.Client
) -> None:
    key = server.new_key("runtime-cacher")
    code = f"{RANDOM}\nprint(open('b.bin', 'rb').read())\n# {uuid.uuid4()}"
    files = {"b.bin": {"base64": "AP8="}}
    first = run(client, key, code, cache=True, files=files, runtime="minimal").json()
    again = run(client, key, code, cache=True, files=files, runtime="minimal").json()
    assert again["cached_from"] == first["id"] and again["runtime"] == "minimal"
    other_runtime = run(client, key, code, cache=True, files=files).json()
    other_bytes = run(client, key, code, cache=True, files={"b.bin": {"base64": "AP4="}}).json()
    assert not other_runtime["cached"] and not other_bytes["cached"]
    assert other_runtime["runtime"] == "scientific"


def test_run_out_writes_a_servers_artifacts(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = server.new_key("cli-out")
    program = tmp_path / "prog.py"
    program.write_text(WRITES_ARTIFACTS)
    out = tmp_path / "results"
    argv = ["run", str(program), "--stdin", "", "--server", server.url, "--key", key]
    assert main([*argv, "--runtime", "minimal", "--out", str(out)]) == 0
    assert capsys.readouterr().out == "written\n"
    assert (out / "x.csv").read_bytes() == b"a,b\n1,2\n"
    assert (out / "sub" / "y.bin").read_bytes() == bytes(range(256))
    [row] = server.stored("cli-out")
    assert row.runtime == "minimal"


def test_the_python_client_sends_bytes_and_fetches_artifacts(server: Server) -> None:
    key = server.new_key("python-client")
    code = f"{WRITES_ARTIFACTS}print(open('in.bin', 'rb').read().hex())\n"
    with Client(server.url, key) as client:
        record = client.run(code, files={"in.bin": b"\x00\xff"}, runtime="minimal")
        assert (record.stdout, record.runtime) == ("written\n00ff\n", "minimal")
        assert client.artifact(record.id, "out/x.csv") == b"a,b\n1,2\n"
        assert client.artifact(record.id, "out/sub/y.bin") == bytes(range(256))
        with pytest.raises(ApiErrorResponse) as missing:
            client.artifact(record.id, "out/absent #1?.txt")
        assert (missing.value.http_status, missing.value.code) == (404, "not_found")
        runtimes = client.runtimes()
    assert {runtime.name for runtime in runtimes} >= {"minimal", "scientific"}
