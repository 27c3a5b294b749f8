"""Other services' APIs on our engine, for clients that already speak them (API.md,
"Compatibility"). Pure: models and mappings, no Ray, no service; the routes are
:mod:`serve_app.http.routes.compat`.

- :mod:`.models`: SandboxFusion's request and response models (its client 0.3.7's);
- :mod:`.run_code`: ``run_code`` to an execution and its record back (the status table);
- :mod:`.jupyter`: ``run_jupyter`` as the calls of one session, and each call's record back.
"""

from serve_app.compat.jupyter import (
    cell_call,
    cell_result,
    cell_wall_s,
    fetch_call,
    fetched_elsewhere,
    kernel_error,
    session_body,
)
from serve_app.compat.models import (
    CellRunResult,
    CommandRunResult,
    CommandRunStatus,
    RunCodeRequest,
    RunCodeResponse,
    RunJupyterRequest,
    RunJupyterResponse,
    RunStatus,
)
from serve_app.compat.run_code import (
    command_result,
    decoded_files,
    execution_body,
    fetched,
    policy_refusal,
    run_code_response,
    unsupported_language,
)

__all__ = [
    "CellRunResult",
    "CommandRunResult",
    "CommandRunStatus",
    "RunCodeRequest",
    "RunCodeResponse",
    "RunJupyterRequest",
    "RunJupyterResponse",
    "RunStatus",
    "cell_call",
    "cell_result",
    "cell_wall_s",
    "command_result",
    "decoded_files",
    "execution_body",
    "fetch_call",
    "fetched",
    "fetched_elsewhere",
    "kernel_error",
    "policy_refusal",
    "run_code_response",
    "session_body",
    "unsupported_language",
]
