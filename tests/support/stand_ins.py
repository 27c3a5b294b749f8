"""Stand-ins for the executor's Serve handle, for tests of the service without Ray."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Self

from executors import ExecutionRequest

__all__ = ["RunsStandIn"]


class RunsStandIn(ABC):
    """A handle whose ``run.remote(request)`` awaits :meth:`answer` (the record in API form),
    as the service awaits a Serve handle's response."""

    @property
    def run(self) -> Self:
        return self

    def remote(self, request: ExecutionRequest, **_: Any) -> Any:
        return self.answer(request)

    @abstractmethod
    async def answer(self, request: ExecutionRequest) -> dict[str, Any]:
        """The record of ``request``'s run, in API form."""
