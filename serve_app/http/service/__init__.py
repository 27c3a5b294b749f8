"""The execution service of one ingress replica, one job per module:

transactions.py  database work in one transaction each, off the event loop
background.py    the replica's background tasks: spawned, counted, drained
auditing.py      audit events of refusals, written in the background
auth.py          authentication, its caches and the failed-address throttle
admission.py     rate, import policy, in-flight leases, the batch backlog
runner.py        the executor call: attempts and tracing
results.py       terminal records written exactly once, with the database retry
polling.py       reads repeated until final or ``wait_s`` is over
answers.py       typed answers (batches, pages) in the API's JSON shape
executions.py    single executions: idempotency, result cache, now, in the background or streamed
streams.py       what streamed executions and session calls share: the opened stream, replays
batches.py       batches: stored at once, run under the key's cap
sessions.py      sessions: reserved under the key's cap, placed on session hosts, called
session_rows.py  session rows brought up to date with their hosts, each ended once
sweeper.py       the replica's session sweeper (and the first session hosts, warmed)
interactive.py   one ``/v1/ws`` connection: authentication, runs with interactive input
interactive_messages.py  the messages of ``/v1/ws``, parsed and validated; error events
interactive_input.py     a ``/v1/ws`` run's standard input: capped, relayed, ended once
facade.py        :class:`ExecutionService`, composing them for the routes and recovery
"""

from serve_app.http.service.admission import rate_limit_headers
from serve_app.http.service.answers import BatchAccepted, BatchAnswer, ExecutionPage
from serve_app.http.service.auth import AUTH_CACHE_TTL_S
from serve_app.http.service.executions import Created
from serve_app.http.service.facade import ExecutionService
from serve_app.http.service.polling import MAX_WAIT_S

__all__ = [
    "AUTH_CACHE_TTL_S",
    "MAX_WAIT_S",
    "BatchAccepted",
    "BatchAnswer",
    "Created",
    "ExecutionPage",
    "ExecutionService",
    "rate_limit_headers",
]
