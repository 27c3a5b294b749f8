"""GCRA, the generic cell rate algorithm, in integer microseconds.

The algorithm of redis-cell and throttled (and of Stripe's and Heroku's API limiters): a key
allowed ``limit`` hits per ``PERIOD_US`` has an *emission interval* ``T = PERIOD_US // limit``
and one stored number, its *theoretical arrival time* (TAT): when the key would be idle again
had every allowed hit cost ``T``. A hit at ``now`` is allowed when ``max(TAT, now) + T`` is at
most ``PERIOD_US`` ahead of ``now``, and then becomes the new TAT. So a fresh key gets a burst
of exactly ``limit`` hits, then one more every ``T`` - a smooth rolling window with no
fixed-window edge where twice the limit gets through, and O(1) state per key.

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


def gcra(tat_us: int | None, now_us: int, limit: int) -> tuple[int | None, RateDecision]:
    """One hit against a key whose TAT is ``tat_us``: the TAT to store (None: unchanged)."""
    interval = emission_interval_us(limit)
    tat = now_us if tat_us is None else max(tat_us, now_us)
    new_tat = tat + interval
    allow_at = new_tat - PERIOD_US
    if now_us < allow_at:
        return None, decision(limit, False, 0, tat - now_us, allow_at - now_us)
    remaining = (PERIOD_US - (new_tat - now_us)) // interval
    return new_tat, decision(limit, True, remaining, new_tat - now_us, 0)


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
