"""Stand-ins for the executor's Serve handle, for tests of the service without Ray."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Self

from executors import ExecutionRequest

__all__ = ["RunsStandIn"]


class _RunBatch:
    """``run_batch.remote(requests)``: every request's :meth:`RunsStandIn.answer`, at once."""

    def __init__(self, runs: RunsStandIn) -> None:
        self._runs = runs

    def remote(self, requests: Sequence[ExecutionRequest], **_: Any) -> Any:
        self._runs.batch_calls.append(len(requests))
        return asyncio.gather(*(self._runs.answer(request) for request in requests))


class RunsStandIn(ABC):
    """A handle whose ``run.remote(request)`` awaits :meth:`answer` (the record in API form),
    as the service awaits a Serve handle's response; ``run_batch.remote(requests)`` answers
    each (the sizes of those calls are kept in ``batch_calls``)."""

    def __init__(self) -> None:
        self.batch_calls: list[int] = []

    @property
    def run(self) -> Self:
        return self

    @property
    def run_batch(self) -> _RunBatch:
        return _RunBatch(self)

    def remote(self, request: ExecutionRequest, **_: Any) -> Any:
        return self.answer(request)

    @abstractmethod
    async def answer(self, request: ExecutionRequest) -> dict[str, Any]:
        """The record of ``request``'s run, in API form."""
