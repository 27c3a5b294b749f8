"""A :class:`SessionHost` as a Ray actor: detached and named, so that any ingress replica finds it
by name, and its sessions outlive the replica that created them.

Threaded (``max_concurrency``): calls of different sessions run at once, each on a thread of
its own; the host itself refuses a second call of one session. Ray schedules the actor with the
resources of all the sessions it may hold (``capacity`` places of CPU share and memory), so
that a node without room for a new host sends it elsewhere, and an autoscaler that sees it
pending adds a node (``cluster/README.md``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from executors._config import SandboxConfig
from executors._logging import configure_json_logging
from executors._models import EndReason, ExecutionRecord, ExecutionRequest
from executors._sandbox import LiveIO, StdinFeed
from executors._sessions._host import SessionHost
from executors._sessions._metrics import session_metrics
from executors._sessions._models import SessionSpec, SessionState
from executors._stdin_relay import StdinChannel, pull_stdin_blocking
from executors._streaming import STREAM_BUFFER_BYTES, StreamBuffer, record_event

__all__ = ["SessionHostActor"]

logger = logging.getLogger("executors.sessions")


class SessionHostActor:
    """The remote face of one :class:`SessionHost` (see :class:`SessionHosts` for its use)."""

    def __init__(
        self,
        config: SandboxConfig,
        name: str,
        capacity: int,
        retire_after_s: float | None = None,
    ) -> None:
        import ray

        configure_json_logging(component="sessions")
        node_id = ray.get_runtime_context().get_node_id()
        self.host = SessionHost(
            config, name=name, capacity=capacity, node_id=node_id, metrics=session_metrics()
        )
        self.host.start()
        if retire_after_s is not None:
            threading.Thread(
                target=self._retire_when_idle, args=(retire_after_s,), daemon=True
            ).start()

    def _retire_when_idle(self, after_s: float) -> None:
        """Once empty for ``after_s``, stop and leave the cluster (its resources go back to
        Ray, and the autoscaler may remove its node): a host beyond the warm ones."""
        import ray

        empty_since: float | None = None
        while True:
            time.sleep(min(5.0, max(0.1, after_s / 4)))
            now = time.monotonic()
            if self.host.overview()["active"]:
                empty_since = None
                continue
            empty_since = now if empty_since is None else empty_since
            if now - empty_since >= after_s and self.host.retire_if_empty():
                logger.info("session host %s retires: empty for %.0f s", self.host.name, after_s)
                self.host.close()
                ray.kill(ray.get_runtime_context().current_actor)
                return

    def overview(self) -> dict[str, Any]:
        """Name, node, active sessions, capacity (answering also says it has started)."""
        return self.host.overview()

    def create(self, spec: SessionSpec) -> SessionState:
        return self.host.create(spec)

    def call(
        self, session_id: uuid.UUID, request: ExecutionRequest
    ) -> tuple[ExecutionRecord, SessionState]:
        return self.host.call(session_id, request)

    def call_stream(
        self,
        session_id: uuid.UUID,
        request: ExecutionRequest,
        stdin: StdinChannel | None = None,
        buffer_bytes: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """:meth:`call`, streamed (a Ray streaming generator): the output as the call writes
        it, then ``{"type": "record", "record": ..., "state": SessionState}``; ``stdin`` and
        ``buffer_bytes`` as the executor's ``run_stream``. Refusals (busy, ended) raise before
        any event. The call runs on a thread of its own, so a slow reader never holds it."""
        buffer = StreamBuffer(buffer_bytes or STREAM_BUFFER_BYTES)
        feed = None if stdin is None else StdinFeed()
        stop = threading.Event()
        live = LiveIO(on_output=buffer.put_output, stdin=feed)

        def work() -> None:
            try:
                record, state = self.host.call(session_id, request, live)
            except BaseException as exc:  # noqa: BLE001 - raised to the reader
                buffer.fail(exc)
            else:
                buffer.finish(record_event(record, state=state))
            finally:
                stop.set()

        threading.Thread(target=work, name="session-call", daemon=True).start()
        if stdin is not None and feed is not None:
            threading.Thread(
                target=pull_stdin_blocking, args=(stdin, feed, stop), daemon=True
            ).start()
        try:
            for event in buffer.iter(poll_s=1.0):  # noqa: UP028 - Ray sends into it
                yield event
        finally:
            stop.set()
            if feed is not None:
                feed.close()

    def end(self, session_id: uuid.UUID, reason: EndReason) -> SessionState:
        return self.host.end(session_id, reason)

    def states(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, SessionState]:
        return self.host.states(ids)

    def pids(self) -> dict[str, Any]:
        """The zygotes' and the sessions' init pids (for measurements)."""
        sessions = {str(sid): pid for sid, pid in self.host.interpreter_pids().items()}
        return {"zygotes": self.host.zygote_pids(), "sessions": sessions}

    def shutdown(self, reason: EndReason = EndReason.SHUTDOWN) -> list[SessionState]:
        """End every session and stop the zygotes; the caller then kills the actor."""
        return self.host.close(reason)
