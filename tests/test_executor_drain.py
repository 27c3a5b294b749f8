"""A draining executor replica hands back the runs that had not started (issue 17).

When Serve begins stopping a replica while its deployment goes on (here a new version of it
deployed: a rolling update; a downscale alike), the runs waiting in it for a slot are handed
back, never started there: their calls raise ``ReplicaDrainingError`` (a batch's: with the
records of the runs that did run), while the run in progress finishes with its own record, not
``internal_error``. A replica deleted with its application (the service stopping) has nowhere
to hand them: they keep their places and run while the drain lets them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from executors import (
    ExecutionRecord,
    ExecutionRequest,
    Limits,
    ReplicaDrainingError,
    SandboxConfig,
    build_executor_app,
)
from serve_app.http._metrics import ingress_metrics
from serve_app.http.service.runner import Runner
from tests.support.polling import eventually

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

MIB = 1024 * 1024
LIMITS = Limits(
    wall_timeout_s=10,
    cpu_time_s=10,
    memory_bytes=128 * MIB,
    max_output_bytes=64 * 1024,
    max_processes=16,
    max_file_bytes=1 * MIB,
)
SLEEP_3_S = "import time; time.sleep(3); print('done')"
QUEUED = 3


def request(code: str) -> ExecutionRequest:
    return ExecutionRequest(code=code, limits=LIMITS)


@pytest.fixture(scope="module")
def serve_instance(ray_session: None) -> Iterator[None]:
    """Serve without an HTTP proxy, stopped after this module."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    yield
    serve.shutdown()  # type: ignore[no-untyped-call]


def one_slot_app(**options: Any) -> Any:
    """One replica of one slot that takes several requests at once (so they queue in it)."""
    return build_executor_app(
        SandboxConfig(),
        1,
        min_replicas=1,
        max_replicas=1,
        num_cpus=0.5,
        max_ongoing_requests=2 * QUEUED + 2,
        graceful_shutdown_timeout_s=20,
        **options,
    )


def handed_back(response: Any) -> ReplicaDrainingError:
    """The ``ReplicaDrainingError`` ``response`` raised (Ray's wrapper's cause, if wrapped)."""
    with pytest.raises(ReplicaDrainingError) as raised:
        response.result(timeout_s=30)
    cause = getattr(raised.value, "cause", raised.value)
    assert isinstance(cause, ReplicaDrainingError)
    return cause


def wait_busy(handle: Any) -> None:
    eventually(
        lambda: handle.stats.remote().result()["busy_slots"] == 1,
        20,
        "the first run starts",
        interval_s=0.1,
    )


def redeploy_while_busy(app: str, handle: Any) -> None:
    """Deploy a new version of the app once its one slot runs a job: Serve starts the new
    replica, then stops the old one (a rolling update)."""
    from ray import serve

    wait_busy(handle)
    release = {"env_vars": {"EXEC_AGENT_RELEASE": uuid.uuid4().hex}}
    serve.run(one_slot_app(runtime_env=release), name=app, route_prefix=None)


def test_a_stopping_replica_hands_back_its_queued_runs(serve_instance: None) -> None:
    from ray import serve

    app = "exec-agent-test-hand-back"
    handle = serve.run(one_slot_app(), name=app, route_prefix=None)
    running = handle.run.remote(request(SLEEP_3_S))
    wait_busy(handle)
    queued = [handle.run.remote(request(f"print({n})")) for n in range(QUEUED)]
    stopper = threading.Thread(target=redeploy_while_busy, args=(app, handle))
    stopper.start()
    try:
        record = ExecutionRecord.model_validate(running.result(timeout_s=30))
        assert (record.status, record.stdout) == ("ok", "done\n")  # finished, not killed
        for response in queued:
            assert handed_back(response).records == []
    finally:
        stopper.join(60)
        serve.delete(app)
    assert not stopper.is_alive()


def test_a_replica_deleted_with_its_application_keeps_its_queued_runs(
    serve_instance: None,
) -> None:
    """The service stopping: no replica would take a run handed back, so the waiting runs
    keep their places and run within the drain, each with its program's record."""
    from ray import serve

    app = "exec-agent-test-delete-keeps"
    handle = serve.run(one_slot_app(), name=app, route_prefix=None)
    running = handle.run.remote(request("import time; time.sleep(1); print('done')"))
    wait_busy(handle)
    queued = [handle.run.remote(request(f"print({n})")) for n in range(QUEUED)]
    stopper = threading.Thread(target=serve.delete, args=(app,))
    stopper.start()
    try:
        records = [
            ExecutionRecord.model_validate(response.result(timeout_s=60))
            for response in [running, *queued]
        ]
    finally:
        stopper.join(60)
    assert [record.stdout for record in records] == ["done\n"] + [f"{n}\n" for n in range(QUEUED)]
    assert {record.status for record in records} == {"ok"}


def test_a_batch_hands_back_its_runs_that_had_not_started(serve_instance: None) -> None:
    from ray import serve

    app = "exec-agent-test-batch-hand-back"
    handle = serve.run(one_slot_app(), name=app, route_prefix=None)
    runs = [request(SLEEP_3_S)] + [request(f"print({n})") for n in range(QUEUED)]
    batch = handle.run_batch.remote(runs, hand_back=True)
    stopper = threading.Thread(target=redeploy_while_busy, args=(app, handle))
    stopper.start()
    try:
        records = handed_back(batch).records
    finally:
        stopper.join(60)
        serve.delete(app)
    assert len(records) == len(runs)
    first = ExecutionRecord.model_validate(records[0])
    assert (first.status, first.stdout) == ("ok", "done\n")
    assert records[1:] == [None] * QUEUED


def test_a_batch_without_hand_back_runs_every_item(serve_instance: None) -> None:
    """The pipeline's batches (no ``hand_back``) keep waiting for the slot while the drain
    lets them: every item ends with its program's record."""
    from ray import serve

    app = "exec-agent-test-batch-kept"
    handle = serve.run(one_slot_app(), name=app, route_prefix=None)
    runs = [request("import time; time.sleep(1); print('done')")] + [
        request(f"print({n})") for n in range(QUEUED)
    ]
    batch = handle.run_batch.remote(runs)
    stopper = threading.Thread(target=redeploy_while_busy, args=(app, handle))
    stopper.start()
    try:
        records = [ExecutionRecord.model_validate(item) for item in batch.result(timeout_s=60)]
    finally:
        stopper.join(60)
        serve.delete(app)
    assert [record.stdout for record in records] == ["done\n"] + [f"{n}\n" for n in range(QUEUED)]
    assert {record.status for record in records} == {"ok"}


def test_the_runner_sends_handed_back_runs_to_the_new_version(
    serve_instance: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The ingress' runner, through the deployment's handle, during a redeploy: a batch's chunk,
    single runs and a streamed one wait behind a running one when the replica's new version is
    deployed; the
    handed-back ones are sent again (the chunk's only, not its run that finished) and every run
    ends with its program's record."""
    from ray import serve

    app = "exec-agent-test-runner-hand-back"
    handle = serve.run(one_slot_app(), name=app, route_prefix=None)
    runner = Runner(handle, ingress_metrics())
    chunk = [request(SLEEP_3_S)] + [request(f"print({n})") for n in range(QUEUED)]
    singles = [request(f"print({n})") for n in range(10, 10 + QUEUED)]
    release = {"env_vars": {"EXEC_AGENT_RELEASE": "2"}}

    async def streamed() -> ExecutionRecord:
        events = [event async for event in runner.run_stream(uuid.uuid4(), request("print(99)"))]
        # print writes "99" and "\n" apart: one chunk or two, as the executor read the pipe.
        *chunks, last = events
        assert last["type"] == "record", events
        assert {event["type"] for event in chunks} == {"stdout"}, events
        assert "".join(event["text"] for event in chunks) == "99\n", events
        return ExecutionRecord.model_validate(events[-1]["record"])

    async def singles_then_redeploy() -> list[ExecutionRecord]:
        await asyncio.to_thread(
            eventually,
            lambda: handle.stats.remote().result()["busy_slots"] == 1,
            20,
            "the first run starts",
            interval_s=0.1,
        )
        runs = [runner.run(uuid.uuid4(), single, background=True) for single in singles]
        waiting = asyncio.gather(*runs, streamed())
        await asyncio.sleep(0.5)  # they reach the replica's queue
        new = one_slot_app(runtime_env=release)
        await asyncio.to_thread(serve.run, new, name=app, route_prefix=None)
        return list(await waiting)

    async def scenario() -> tuple[list[ExecutionRecord], list[ExecutionRecord]]:
        ids = [uuid.uuid4() for _ in chunk]
        return await asyncio.gather(runner.run_many(ids, chunk), singles_then_redeploy())

    with caplog.at_level(logging.INFO, logger="serve_app.http.service.runner"):
        try:
            batch, single = asyncio.run(scenario())
        finally:
            serve.delete(app)
    assert [(r.status, r.stdout) for r in batch] == [("ok", "done\n")] + [
        ("ok", f"{n}\n") for n in range(QUEUED)
    ]
    expected = [("ok", f"{n}\n") for n in range(10, 10 + QUEUED)] + [("ok", "99\n")]
    assert [(r.status, r.stdout) for r in single] == expected
    said = [record.getMessage() for record in caplog.records]
    handed_back = [line for line in said if "handed back by a draining executor" in line]
    assert len(handed_back) >= 1 + QUEUED + 1, said  # the chunk, each single, the stream
    assert not any("executor replica lost" in line for line in said), said
