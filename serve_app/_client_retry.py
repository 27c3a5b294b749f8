"""When the Python client sends a request again: tenacity's policies, for sync and asyncio alike.

Retried: ``429 rate_limited``, ``503 overloaded`` and ``503 unavailable``, after the answer's
``Retry-After`` (else an exponential backoff); a connection that failed or timed out, only on
a request that is safe to send twice (a ``GET``, a ``DELETE``, a ``POST`` with an
``Idempotency-Key``). Never more than ``max_attempts`` tries, nor more than ``max_wait_s``
seconds asleep in all: a ``Retry-After`` past what is left ends the retries at once, the last
error raised as it came.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, Retrying

from serve_app.errors import (
    OverloadedResponse,
    RateLimitedResponse,
    ServerUnreachableError,
    UnavailableResponse,
)

__all__ = ["RetryPolicy"]

RETRIED_ANSWERS = (RateLimitedResponse, OverloadedResponse, UnavailableResponse)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long the client retries (``max_attempts=1``: never).

    ``backoff_s``: the first pause after a failed connection, or an answer without
    ``Retry-After``; doubled each time, at most ``max_backoff_s``."""

    max_attempts: int = 5
    max_wait_s: float = 60.0
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def sync(self, *, idempotent: bool) -> Retrying:
        """A tenacity ``Retrying`` for one request."""
        return Retrying(**self._options(idempotent))

    def asynchronous(self, *, idempotent: bool) -> AsyncRetrying:
        """A tenacity ``AsyncRetrying`` for one request."""
        return AsyncRetrying(**self._options(idempotent))

    def _options(self, idempotent: bool) -> dict[str, Any]:
        retried: tuple[type[BaseException], ...] = RETRIED_ANSWERS
        if idempotent:
            retried = (*retried, ServerUnreachableError)

        def retry(state: RetryCallState) -> bool:
            outcome = state.outcome
            return outcome is not None and isinstance(outcome.exception(), retried)

        return {"retry": retry, "wait": self._wait, "stop": self._stop, "reraise": True}

    def _wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        after = getattr(error, "retry_after_s", None)
        if isinstance(after, int | float) and after >= 0:
            return float(after)
        backoff: float = self.backoff_s * 2 ** (state.attempt_number - 1)
        return min(backoff, self.max_backoff_s)

    def _stop(self, state: RetryCallState) -> bool:
        # Called once the next pause is known: a pause past the budget is not taken at all.
        over_budget = state.idle_for + state.upcoming_sleep > self.max_wait_s
        return state.attempt_number >= self.max_attempts or over_budget
