"""What the engine shares with the service that runs it: one log format, one trace, one
metrics registry.

The service (``serve_app``) logs, traces and measures the way the executor replicas do; it
takes these from here, never from the engine's private modules.
"""

from executors._logging import (
    EXTRA_FIELDS,
    LOG_FORMAT_VARIABLE,
    LOG_LEVEL_VARIABLE,
    TextLogFormatter,
    configure_json_logging,
    redact,
    resolve_log_format,
    serve_request_id,
)
from executors._metrics import (
    DURATION_BUCKETS_S,
    KeptGauge,
    metric_types,
    ray_connected,
    zero_counter,
)
from executors._tracing import (
    ATTEMPT,
    BATCH_RUNS,
    ENDPOINT_VARIABLE,
    EXECUTION_ID,
    REQUEST_ID,
    SERVICE_NAME_VARIABLE,
    STATUS,
    current_tracer,
    flush_tracing,
    init_tracing,
    inject_context,
    mark_failed,
    tracing_enabled,
)

__all__ = [
    "ATTEMPT",
    "BATCH_RUNS",
    "DURATION_BUCKETS_S",
    "ENDPOINT_VARIABLE",
    "EXECUTION_ID",
    "EXTRA_FIELDS",
    "LOG_FORMAT_VARIABLE",
    "LOG_LEVEL_VARIABLE",
    "REQUEST_ID",
    "SERVICE_NAME_VARIABLE",
    "STATUS",
    "KeptGauge",
    "TextLogFormatter",
    "configure_json_logging",
    "current_tracer",
    "flush_tracing",
    "init_tracing",
    "inject_context",
    "mark_failed",
    "metric_types",
    "ray_connected",
    "redact",
    "resolve_log_format",
    "serve_request_id",
    "tracing_enabled",
    "zero_counter",
]
