"""The two error trees: every exported exception survives pickling (Ray moves them between
processes), every service error carries its own code and HTTP status, written once, and the
API's edge reads them from the classes instead of keeping a table of its own.
"""

from __future__ import annotations

import ast
import importlib
import pickle
import re
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import executors
import serve_app
from executors import ExecutorError
from serve_app import errors
from serve_app.api.errors import api_error
from serve_app.errors import ServiceError, UnavailableError
from tests.support.paths import REPO

# Every module whose ``__all__`` is public surface of one of the two packages.
EXPORTING_MODULES = (
    "executors",
    "serve_app",
    "serve_app.errors",
    "serve_app.api",
    "serve_app.cache",
    "serve_app.db",
    "serve_app.observability",
    "serve_app.ratelimit",
)

# Representative arguments for each class whose constructor is its own, with the message
# they make. A class that only takes a message needs no entry: it gets MESSAGE.
MESSAGE = "no such execution: 3f2c"
EXAMPLES: dict[str, tuple[tuple[Any, ...], str]] = {
    "SandboxUnavailableError": (
        (["user namespaces", "seccomp"],),
        "required isolation layers unavailable: user namespaces, seccomp",
    ),
    "SandboxStartError": (
        (3, "zygote exited during start-up"),
        "sandbox slot 3 failed to start: zygote exited during start-up",
    ),
    "RuntimeNotInstalledError": (
        ("scientific", "/opt/exec-agent/runtimes/scientific"),
        "runtime 'scientific' is not installed at /opt/exec-agent/runtimes/scientific "
        "(or its pins changed since): run scripts/setup",
    ),
    "ReplicaDrainingError": (
        ([{"status": "ok"}, None],),
        "the executor replica is stopping: 1 run(s) handed back, not started",
    ),
    "SessionBusyError": (("3f2c",), "session 3f2c is running another call"),
    "StdinOverflowError": ((1024,), "more than 1024 bytes of standard input wait for the program"),
    "SessionEndedError": (
        ("3f2c", "idle", "no call came within its idle timeout"),
        "session 3f2c has ended (idle): no call came within its idle timeout",
    ),
    "SessionPlacementError": (
        ("all 64 hosts are full",),
        "no session host could take the session: all 64 hosts are full",
    ),
    "InvalidFieldsError": (
        ("limits.wall_timeout_s: too large", [{"field": "limits", "message": "x", "type": "y"}]),
        "limits.wall_timeout_s: too large",
    ),
    "PayloadTooLargeError": ((2_097_152,), "the request body is over 2097152 bytes"),
    "PolicyViolationError": (
        ("import of 'socket' is not allowed", ["socket", "ctypes"]),
        "import of 'socket' is not allowed",
    ),
    "RateLimitedError": ((2.2,), "rate limit exceeded"),
    "OverloadedError": ((0.2, "queue full"), "queue full"),
    "UnavailableError": ((5,), "a dependency is unavailable"),
    "DatabaseUnavailableError": ((1.5,), "the database is unavailable"),
    "DatabaseNotReadyError": (
        ("the database has no schema yet: run `exec-agent db upgrade`",),
        "the database has no schema yet: run `exec-agent db upgrade`",
    ),
    "StoreUnavailableError": ((0.5,), "store unavailable; next attempt in 0.500 s"),
    "SessionTerminatedError": (
        ("session 3f2c has ended (idle): no call for 600 s", "idle"),
        "session 3f2c has ended (idle): no call for 600 s",
    ),
    "SessionLimitError": ((8,), "at most 8 active sessions per key: end one first"),
    "ApiErrorResponse": (
        (404, "not_found", "no such execution", '{"error": {"code": "not_found"}}'),
        "HTTP 404 not_found: no such execution",
    ),
    **{
        name: ((status, code, "refused", "{}", retry), f"HTTP {status} {code}: refused")
        for name, status, code, retry in (
            ("RateLimitedResponse", 429, "rate_limited", 2.0),
            ("SessionLimitResponse", 429, "session_limit", None),
            ("OverloadedResponse", 503, "overloaded", 1.0),
            ("UnavailableResponse", 503, "unavailable", 1.0),
            ("UnauthorizedResponse", 401, "unauthorized", None),
            ("NotFoundResponse", 404, "not_found", None),
            ("SessionBusyResponse", 409, "session_busy", None),
            ("SessionTerminatedResponse", 410, "session_terminated", None),
            ("InvalidRequestResponse", 422, "invalid_request", None),
            ("PolicyViolationResponse", 422, "policy_violation", None),
        )
    },
}

# The API's error table (API.md), and `conflict` (409), which the service answers too.
DOCUMENTED_CODES = {
    "invalid_json": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "session_busy": 409,
    "session_terminated": 410,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "invalid_request": 422,
    "policy_violation": 422,
    "rate_limited": 429,
    "session_limit": 429,
    "overloaded": 503,
    "unavailable": 503,
}


def _subclasses(base: type[BaseException]) -> Iterator[type[BaseException]]:
    """``base`` and the classes below it that the two packages define (not tests, not Ray's
    ``RayTaskError(...)`` wrappers)."""
    pending = [base]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        if kind.__module__.split(".")[0] in ("executors", "serve_app"):
            yield kind


def _exported() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module_name in EXPORTING_MODULES:
        module: ModuleType = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, BaseException):
                assert found.setdefault(name, value) is value, f"two exceptions named {name}"
    return found


EXPORTED = _exported()
SERVICE_ERRORS = sorted(
    (kind for kind in _subclasses(ServiceError) if not kind.__name__.startswith("_")),
    key=lambda kind: kind.__name__,
)


def example(kind: type[BaseException]) -> tuple[BaseException, str]:
    """An instance of ``kind`` built from representative arguments, and its message."""
    if kind.__name__ in EXAMPLES:
        args, message = EXAMPLES[kind.__name__]
        return kind(*args), message
    # Only a class that keeps Exception's constructor may go without an example.
    assert kind.__init__ is Exception.__init__, f"add {kind.__name__} to EXAMPLES"
    return kind(MESSAGE), MESSAGE


def _picklers() -> list[tuple[str, Callable[[Any], bytes], Callable[[bytes], Any]]]:
    picklers = [("pickle", pickle.dumps, pickle.loads)]
    try:
        from ray import cloudpickle  # what Ray sends exceptions with
    except ImportError:  # pragma: no cover - Ray is a dependency of the service
        return picklers
    return [*picklers, ("cloudpickle", cloudpickle.dumps, cloudpickle.loads)]


# --------------------------------------------------------------------------- one tree each


def test_every_exported_exception_belongs_to_its_packages_tree() -> None:
    trees = {*_subclasses(ServiceError), *_subclasses(ExecutorError)}
    outside = {name for name, kind in EXPORTED.items() if kind not in trees}
    assert not outside, f"exported exceptions outside both trees: {sorted(outside)}"
    for kind in trees:
        if kind.__name__.startswith("_"):
            continue
        assert EXPORTED.get(kind.__name__) is kind, f"{kind.__name__} is not exported"
    for name in executors.__all__:
        kind = getattr(executors, name)
        if isinstance(kind, type) and issubclass(kind, BaseException):
            assert issubclass(kind, ExecutorError), name
    assert all(issubclass(getattr(serve_app, name), ServiceError) for name in serve_app.__all__)


def test_the_store_error_is_the_one_of_the_tree() -> None:
    from serve_app import ratelimit
    from serve_app.ratelimit import _guard

    assert ratelimit.StoreUnavailableError is errors.StoreUnavailableError
    assert _guard.StoreUnavailableError is errors.StoreUnavailableError
    assert issubclass(errors.StoreUnavailableError, UnavailableError)


@pytest.mark.parametrize("module", [errors, importlib.import_module("executors._errors")])
def test_the_module_docstring_draws_the_whole_tree(module: ModuleType) -> None:
    drawn = set(re.findall(r"[├└]── (\w+)", module.__doc__ or ""))
    base = ServiceError if module is errors else ExecutorError
    public = {kind.__name__ for kind in _subclasses(base) if not kind.__name__.startswith("_")}
    assert drawn | {base.__name__} == public


# --------------------------------------------------------------------------- pickling


@pytest.mark.parametrize("name", sorted(EXPORTED))
@pytest.mark.parametrize(("pickler", "dumps", "loads"), _picklers())
def test_exported_exceptions_survive_pickling(
    name: str,
    pickler: str,
    dumps: Callable[[Any], bytes],
    loads: Callable[[bytes], Any],
) -> None:
    exc, message = example(EXPORTED[name])
    copy = loads(dumps(exc))
    assert type(copy) is type(exc)
    assert copy.args == exc.args
    assert str(exc) == message
    assert str(copy) == message
    assert vars(copy) == vars(exc)
    for attribute in ("code", "http_status", "public_message", "retryable", "retry_after_s"):
        assert getattr(copy, attribute, None) == getattr(exc, attribute, None), attribute


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_args_alone_rebuild_the_exception(name: str) -> None:
    # Unpickling also restores __dict__, which can hide args that do not fit the constructor
    # (a message where a list of layers was expected): the constructor must rebuild it alone.
    exc, message = example(EXPORTED[name])
    rebuilt = type(exc)(*exc.args)
    assert rebuilt.args == exc.args
    assert str(rebuilt) == message
    assert vars(rebuilt) == vars(exc)


def test_the_sandbox_start_error_crosses_a_process_boundary_as_raised() -> None:
    # What failed before: a Ray actor's constructor raised it, and unpickling it failed.
    exc = executors.SandboxStartError(1, "bwrap: no permission")
    copy = pickle.loads(pickle.dumps(exc))  # noqa: S301 - bytes this test just made
    assert (copy.slot, copy.detail, copy.code) == (1, "bwrap: no permission", exc.code)


# --------------------------------------------------------------------------- codes and statuses


@pytest.mark.parametrize("kind", SERVICE_ERRORS, ids=lambda kind: kind.__name__)
def test_every_service_error_has_a_code_and_a_status(kind: type[ServiceError]) -> None:
    assert isinstance(kind.code, str)
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", kind.code), kind.code
    assert isinstance(kind.http_status, int)
    assert 400 <= kind.http_status <= 599
    if kind.http_status < 500:
        assert kind.public_message is None, "a 4xx says its own message"
    elif kind.http_status != 500:
        assert kind.public_message, "a 503 must not say the exception's message (hosts, DSNs)"


def test_each_code_is_written_once_and_means_one_status() -> None:
    for base in (ServiceError, ExecutorError):
        writers: dict[str, list[str]] = {}
        for kind in _subclasses(base):
            if "code" in vars(kind):
                writers.setdefault(vars(kind)["code"], []).append(kind.__name__)
        twice = {code: names for code, names in writers.items() if len(names) > 1}
        assert not twice, f"codes written on more than one class: {twice}"
    statuses: dict[str, set[int]] = {}
    for kind in SERVICE_ERRORS:
        statuses.setdefault(kind.code, set()).add(kind.http_status)
    assert all(len(found) == 1 for found in statuses.values()), statuses


def test_the_codes_clients_see_are_the_documented_ones() -> None:
    public = {kind.code: kind.http_status for kind in SERVICE_ERRORS if kind.http_status != 500}
    assert {code: DOCUMENTED_CODES.get(code) for code in public} == public
    # The tree as this version has it (the session codes may come with their classes).
    assert set(DOCUMENTED_CODES) - set(public) <= {
        "session_busy",
        "session_terminated",
        "session_limit",
    }


@pytest.mark.parametrize("kind", SERVICE_ERRORS, ids=lambda kind: kind.__name__)
def test_the_edge_answers_what_the_class_says(kind: type[ServiceError]) -> None:
    exc, message = example(kind)
    answer = api_error(exc)
    if kind.http_status < 500:
        assert (answer.status, answer.code, answer.message) == (
            kind.http_status,
            kind.code,
            message,
        )
    elif kind.public_message is not None:
        assert (answer.status, answer.code) == (kind.http_status, kind.code)
        assert answer.message == kind.public_message
        assert answer.headers["Retry-After"].isdigit()
    else:  # a fault: answered as any other, its code left to the log
        assert (answer.status, answer.code, answer.message) == (
            500,
            "internal_error",
            "internal error",
        )


@pytest.mark.parametrize("name", [name for name in executors.__all__ if name.endswith("Error")])
def test_the_edge_answers_engine_errors_by_retryable(name: str) -> None:
    exc, _ = example(getattr(executors, name))
    answer = api_error(exc)
    if getattr(exc, "retryable", False):
        assert (answer.status, answer.code, answer.headers) == (
            503,
            "unavailable",
            {"Retry-After": "1"},
        )
    else:
        assert (answer.status, answer.code) == (500, "internal_error")


def test_the_engine_refusals_are_retryable_and_its_faults_not() -> None:
    assert executors.PoolClosedError.retryable
    assert executors.SandboxUnavailableError.retryable
    assert not executors.SandboxStartError.retryable  # the pool restarts the slot itself
    assert not ExecutorError.retryable


def test_errors_wrapped_by_ray_answer_as_their_cause() -> None:
    # A deployment's error reaches the edge as RayTaskError(<cause's class>): the class data
    # comes through the wrapper's MRO, the instance's retry_after_s through its __getattr__.
    from ray.exceptions import RayTaskError

    def wrapped(cause: BaseException) -> BaseException:
        return RayTaskError("run", "Traceback: ...", cause).as_instanceof_cause()

    overloaded = api_error(wrapped(errors.OverloadedError(4.5)))
    assert (overloaded.status, overloaded.code, overloaded.headers) == (
        503,
        "overloaded",
        {"Retry-After": "5"},
    )
    closed = api_error(wrapped(executors.PoolClosedError("closed")))
    assert (closed.status, closed.code) == (503, "unavailable")


# --------------------------------------------------------------------------- no second table


def test_the_edge_writes_no_code_of_its_own() -> None:
    source = (REPO / "serve_app" / "api" / "errors.py").read_text()
    literals = {
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    codes = {kind.code for kind in SERVICE_ERRORS} | {
        kind.code for kind in _subclasses(ExecutorError)
    }
    assert not literals & codes, f"codes written in serve_app/api/errors.py: {literals & codes}"


def test_the_edge_follows_a_class_it_has_never_seen() -> None:
    class TeapotError(errors.InvalidRequestError):
        code = "teapot"
        http_status = 418

    class MaintenanceError(ServiceError):
        code = "maintenance"
        http_status = 503
        public_message = "down for maintenance"

    class DrainingError(ExecutorError):
        retryable = True

    teapot = api_error(TeapotError("short and stout"))
    assert (teapot.status, teapot.code, teapot.message) == (418, "teapot", "short and stout")
    maintenance = api_error(MaintenanceError("db01.internal is being patched"))
    assert (maintenance.status, maintenance.code) == (503, "maintenance")
    assert maintenance.message == "down for maintenance"
    draining = api_error(DrainingError("draining"))
    assert (draining.status, draining.code) == (503, UnavailableError.code)
