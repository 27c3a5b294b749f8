"""Sessions on Ray, from an ingress replica: :class:`SessionHosts` places new sessions on session
host actors (starting hosts as they fill up) and reaches any session through its host's name.

Usage (in any process connected to Ray; every method is a coroutine)::

    hosts = SessionHosts(SandboxConfig(), SessionHostOptions(capacity=16))
    state = await hosts.create(SessionSpec(runtime="scientific", limits=limits,
                                           idle_timeout_s=600, ttl_s=3600))
    answer = await hosts.call(state.host, state.id, ExecutionRequest(code="x = 1", ...))
    answer.record.result, answer.state.status
    await hosts.end(state.host, state.id, EndReason.DELETED)

Hosts are named ``<name_prefix>-<n>`` in ``namespace``, detached (they outlive the replica that
started them; :meth:`shutdown` stops them) and never restarted: a host that dies takes its
sessions with it, which then read as ``lost``. Two replicas that start "the next host" at once
get the same actor (``get_if_exists``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from executors._config import SandboxConfig
from executors._errors import SessionEndedError, SessionError, SessionPlacementError
from executors._models import EndReason, ExecutionRecord, ExecutionRequest, utc_now
from executors._sessions._actor import SessionHostActor
from executors._sessions._host import lost_state
from executors._sessions._models import SessionSpec, SessionState
from executors._stdin_relay import StdinChannel

__all__ = ["SessionCallResult", "SessionHostOptions", "SessionHosts", "SessionHostsOverview"]

logger = logging.getLogger("executors.sessions")

MIB = 1024 * 1024
OVERVIEW_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 2.0
"""How long a host not yet seen answering has to answer before it is passed over (one still
waiting for a node, say)."""
SHUTDOWN_TIMEOUT_S = 20.0
OVERVIEW_PENDING_S = 0.25
"""What the overview (readiness) waits for a host it has not seen answering."""


class SessionHostOptions(BaseModel):
    """Where and how big session hosts are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = Field(default="exec-agent", description="Ray namespace of the hosts.")
    name_prefix: str = Field(default="exec-agent-session-host")
    capacity: int = Field(default=32, ge=1, description="Sessions one host holds at most.")
    num_cpus_per_session: float = Field(
        default=0.0, ge=0, description="CPU share Ray reserves per place of a host."
    )
    memory_bytes_per_session: int = Field(
        default=64 * MIB, ge=0, description="Memory Ray reserves per place of a host."
    )
    min_hosts: int = Field(default=1, ge=0, description="Hosts kept started (warm).")
    retire_after_s: float | None = Field(
        default=600.0,
        gt=0,
        description="A host beyond the warm ones stops once empty this long (None: never).",
    )
    max_hosts: int = Field(default=64, ge=1)
    placement_timeout_s: float = Field(
        default=60.0, gt=0, description="How long a new host may wait to be placed (scale-up)."
    )
    label_selector: dict[str, str] = Field(default_factory=dict)
    runtime_env: dict[str, Any] | None = None


@dataclass(frozen=True)
class SessionCallResult:
    """A call's record, and its session's state after it."""

    record: ExecutionRecord
    state: SessionState


class HostSummary(TypedDict):
    """One host's :meth:`SessionHost.overview`."""

    name: str
    node_id: str | None
    active: int
    capacity: int


@dataclass(frozen=True)
class SessionHostsOverview:
    hosts: list[HostSummary]
    """Each host's name, node_id, active and capacity."""

    @property
    def active(self) -> int:
        return sum(int(host.get("active", 0)) for host in self.hosts)


def _is_actor_gone(exc: BaseException) -> bool:
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)


def _cause(exc: Exception) -> Exception:
    """A host's own error as it raised it (Ray wraps it, its message then the remote traceback;
    the service answers with the message alone)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, SessionError) else exc


class SessionHosts:
    """The session hosts of the cluster, as seen from one process."""

    def __init__(self, config: SandboxConfig, options: SessionHostOptions) -> None:
        self.config = config
        self.options = options
        self._handles: dict[str, Any] = {}
        self._full: set[str] = set()
        self._ready: set[str] = set()
        """Hosts seen answering (placed and started)."""
        self._starting = asyncio.Lock()

    # --- hosts --------------------------------------------------------------------

    def host_name(self, index: int) -> str:
        return f"{self.options.name_prefix}-{index}"

    async def host_names(self) -> list[str]:
        """The hosts alive (or being placed) now."""
        import ray

        named = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        prefix = f"{self.options.name_prefix}-"
        return sorted(
            (a["name"] for a in named
             if a.get("namespace") == self.options.namespace and a["name"].startswith(prefix)),
            key=lambda name: int(name.rsplit("-", 1)[1]) if name.rsplit("-", 1)[1].isdigit() else 0,
        )  # fmt: skip

    async def _handle(self, name: str) -> Any | None:
        handle = self._handles.get(name)
        if handle is None:
            import ray

            try:
                handle = await asyncio.to_thread(
                    ray.get_actor, name, namespace=self.options.namespace
                )
            except ValueError:
                return None
            self._handles[name] = handle
        return handle

    def _forget(self, name: str) -> None:
        self._handles.pop(name, None)
        self._full.discard(name)
        self._ready.discard(name)

    async def _answers(self, name: str, handle: Any, timeout_s: float = READY_TIMEOUT_S) -> bool:
        """Whether the host is placed and started (a pending one would hold a call forever)."""
        if name in self._ready:
            return True
        try:
            await asyncio.wait_for(handle.overview.remote(), timeout_s)
        except Exception:  # noqa: BLE001 - pending, starting or gone: not a candidate now
            return False
        self._ready.add(name)
        return True

    async def _start_host(self, index: int) -> str:
        """Start host ``index`` (or join it, if another replica just did) and wait until it
        is placed and ready."""
        import ray

        options = self.options
        name = self.host_name(index)
        actor_options: dict[str, Any] = {
            "name": name,
            "namespace": options.namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "max_restarts": 0,
            "max_concurrency": 2 * options.capacity + 8,
            "num_cpus": options.capacity * options.num_cpus_per_session,
        }
        if options.memory_bytes_per_session:
            actor_options["memory"] = options.capacity * options.memory_bytes_per_session
        if options.label_selector:
            actor_options["label_selector"] = dict(options.label_selector)
        if options.runtime_env:
            actor_options["runtime_env"] = dict(options.runtime_env)
        handle: Any = (
            ray.remote(SessionHostActor)
            .options(**actor_options)
            .remote(
                self.config,
                name,
                options.capacity,
                None if index < options.min_hosts else options.retire_after_s,
            )
        )
        try:
            await asyncio.wait_for(handle.overview.remote(), options.placement_timeout_s)
        except TimeoutError as exc:
            # Left pending: once a node has room (an autoscaler adds one) it starts, and the
            # next creation finds it.
            raise SessionPlacementError(
                f"no node had room for a new session host within {options.placement_timeout_s} s"
            ) from exc
        self._handles[name] = handle
        self._ready.add(name)
        logger.info("session host %s started", name)
        return name

    async def warm(self) -> None:
        """Make sure ``min_hosts`` hosts run (an ingress replica calls it as it starts)."""
        for index in range(self.options.min_hosts):
            await self._start_host(index)

    # --- sessions -----------------------------------------------------------------

    async def create(self, spec: SessionSpec) -> SessionState:
        """Start a session on a host with room, starting a new host when all are full."""
        for _ in range(3):
            names = await self.host_names()
            for name in [n for n in names if n not in self._full] + [
                n for n in names if n in self._full
            ]:
                handle = await self._handle(name)
                if handle is None or not await self._answers(name, handle):
                    continue
                try:
                    state: SessionState = await handle.create.remote(spec)
                    return state
                except SessionPlacementError:
                    self._full.add(name)
                except Exception as exc:  # noqa: BLE001 - sorted below: gone, or re-raised
                    if not _is_actor_gone(exc):
                        raise _cause(exc) from None
                    self._forget(name)
            async with self._starting:
                taken = set(await self.host_names())
                free = [i for i in range(self.options.max_hosts) if self.host_name(i) not in taken]
                if not free:
                    raise SessionPlacementError(f"all {self.options.max_hosts} hosts are full")
                await self._start_host(free[0])
        raise SessionPlacementError("every host was full or gone")

    async def call(
        self, host: str, session_id: uuid.UUID, request: ExecutionRequest
    ) -> SessionCallResult:
        """Run one call (raises ``SessionBusyError``, ``SessionEndedError``)."""
        handle = await self._handle(host)
        if handle is None:
            raise self._lost_error(session_id, host, "its host is gone")
        try:
            record, state = await handle.call.remote(session_id, request)
        except Exception as exc:
            if not _is_actor_gone(exc):
                raise _cause(exc) from None
            self._forget(host)
            raise self._lost_error(session_id, host, "its host died") from exc
        return SessionCallResult(record, state)

    async def call_stream(
        self,
        host: str,
        session_id: uuid.UUID,
        request: ExecutionRequest,
        *,
        stdin: StdinChannel | None = None,
        buffer_bytes: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """:meth:`call`, streamed: the output as it comes, then ``{"type": "record", "record":
        <API dict>, "state": SessionState}`` (``executors/_streaming.py``). Raises as
        :meth:`call` does, refusals before any event. Closing it early leaves the call running
        to its limits (as a :meth:`call` whose caller went away)."""
        handle = await self._handle(host)
        if handle is None:
            raise self._lost_error(session_id, host, "its host is gone")
        stream = handle.call_stream.remote(session_id, request, stdin, buffer_bytes)
        try:
            async for ref in stream:
                yield await ref
        except Exception as exc:
            if not _is_actor_gone(exc):
                raise _cause(exc) from None
            self._forget(host)
            raise self._lost_error(session_id, host, "its host died") from exc

    async def end(self, host: str, session_id: uuid.UUID, reason: EndReason) -> SessionState:
        """End a session now; idempotent (a host that is gone: ``lost``)."""
        handle = await self._handle(host)
        if handle is None:
            return lost_state(session_id, host, None, utc_now(), "its host is gone")
        try:
            state: SessionState = await handle.end.remote(session_id, reason)
        except Exception as exc:
            if not _is_actor_gone(exc):
                raise
            self._forget(host)
            return lost_state(session_id, host, None, utc_now(), "its host died")
        return state

    async def states(self, host: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, SessionState]:
        """Each session's state, from its host (``lost`` when the host is gone)."""
        handle = await self._handle(host)
        if handle is not None:
            try:
                answer: dict[uuid.UUID, SessionState] = await handle.states.remote(list(ids))
                return answer
            except Exception as exc:
                if not _is_actor_gone(exc):
                    raise
                self._forget(host)
        now = utc_now()
        return {sid: lost_state(sid, host, None, now, "its host is gone") for sid in ids}

    async def overview(self) -> SessionHostsOverview:
        """Every host's name, node, active sessions and capacity (a host that does not answer
        within ``OVERVIEW_TIMEOUT_S`` is left out)."""
        hosts = []
        for name in await self.host_names():
            handle = await self._handle(name)
            if handle is None or not await self._answers(name, handle, OVERVIEW_PENDING_S):
                continue
            try:
                summary: HostSummary = await asyncio.wait_for(
                    handle.overview.remote(), OVERVIEW_TIMEOUT_S
                )
                hosts.append(summary)
            except Exception:  # noqa: BLE001, S112 - a host being placed or gone: not counted
                continue
        return SessionHostsOverview(hosts)

    async def shutdown(self) -> list[SessionState]:
        """End every session on every host (``shutdown``) and stop the hosts."""
        import ray

        ended: list[SessionState] = []
        for name in await self.host_names():
            handle = await self._handle(name)
            if handle is None:
                continue
            try:
                if await self._answers(name, handle):  # a pending host holds no session
                    ended += await asyncio.wait_for(handle.shutdown.remote(), SHUTDOWN_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a host gone already, or stuck: killed below
                logger.warning("session host %s did not shut down cleanly", name)
            ray.kill(handle)
            self._forget(name)
        return ended

    @staticmethod
    def _lost_error(session_id: uuid.UUID, host: str, why: str) -> SessionEndedError:
        state = lost_state(session_id, host, None, utc_now(), why)
        return SessionEndedError(str(session_id), str(EndReason.LOST), state.message or "")
