"""GCRA, the generic cell rate algorithm, in integer microseconds.

The algorithm of redis-cell and throttled (and of Stripe's and Heroku's API limiters): a key
allowed ``limit`` hits per ``PERIOD_US`` has an *emission interval* ``T = PERIOD_US // limit``
and one stored number, its *theoretical arrival time* (TAT): when the key would be idle again
had every allowed hit cost ``T``. A hit at ``now`` is allowed when ``max(TAT, now) + T`` is at
most ``PERIOD_US`` ahead of ``now``, and then becomes the new TAT. So a fresh key gets a burst
of exactly ``limit`` hits, then one more every ``T`` - a smooth rolling window with no
fixed-window edge where twice the limit gets through, and O(1) state per key.

A hit may cost more than one (``cost``: a batch of N executions costs N). A hit of up to
``limit`` is allowed when the key has that many hits of allowance left. A hit *over* ``limit``
could never fit in a burst, so it is allowed when the key's whole allowance is there and is
charged in full: the key then stays refused until the debt is paid at the limit's rate, so the
average rate is still ``limit`` per minute and ``retry_after`` is always a real time to wait.
A ``dry_run`` asks whether the hit would be allowed without charging it (a throttle checked
before work that is charged only if it fails).

A refused hit costs nothing. Everything is integers: the Redis Lua script computes with
doubles, which are exact below 2**53 us (year 2255), so both backends agree to the
microsecond. Flooring ``T`` keeps a burst of ``limit`` hits allowed and (for limits up to
about 7,700 per minute) the hit after it refused, even when all land in the same microsecond.

:data:`redis_scripts.GCRA` is this function in Lua; the shared test suite holds them equal.
"""

from __future__ import annotations

from serve_app.ratelimit._types import US_PER_S, RateDecision, Reason

PERIOD_US = 60 * US_PER_S


def emission_interval_us(limit: int) -> int:
    """The cost of one hit: the period over the limit, at least a microsecond."""
    return max(1, PERIOD_US // limit)


def gcra(
    tat_us: int | None, now_us: int, limit: int, cost: int = 1, *, dry_run: bool = False
) -> tuple[int | None, RateDecision]:
    """One hit of ``cost`` against a key whose TAT is ``tat_us``: the TAT to store (None:
    unchanged, as after a refusal or a ``dry_run``)."""
    interval = emission_interval_us(limit)
    tat = now_us if tat_us is None else max(tat_us, now_us)
    allow_at = tat + min(cost, limit) * interval - PERIOD_US
    if now_us < allow_at:
        return None, decision(limit, False, 0, tat - now_us, allow_at - now_us)
    new_tat = tat if dry_run else tat + cost * interval
    remaining = max(0, (PERIOD_US - (new_tat - now_us)) // interval)
    return (None if dry_run else new_tat), decision(limit, True, remaining, new_tat - now_us, 0)


def decision(
    limit: int, allowed: bool, remaining: int, reset_after_us: int, retry_after_us: int
) -> RateDecision:
    """A decision from GCRA's integers (also the Lua script's reply)."""
    return RateDecision(
        reason=Reason.OK if allowed else Reason.LIMITED,
        limit=limit,
        remaining=remaining,
        reset_after_s=reset_after_us / US_PER_S,
        retry_after_s=None if allowed else retry_after_us / US_PER_S,
    )
