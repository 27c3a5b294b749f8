"""The arguments of the service application in a Serve config, and the settings they override.

Every check of a deployment's numbers is written here once, on the models: ``min_replicas <=
max_replicas`` (:class:`executors.ReplicaRange`, which the engine's own arguments share), a
target a replica can reach, a queue that is either capped or not.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from executors import RUNTIMES, ReplicaRange
from serve_app.errors import ConfigurationError, describe_validation_error
from serve_app.settings import PublicSettings, Settings

__all__ = [
    "DEFAULT_INGRESS_TARGET_ONGOING_REQUESTS",
    "INGRESS_MAX_ONGOING_REQUESTS",
    "INGRESS_NUM_CPUS",
    "ExecutorArgs",
    "IngressArgs",
    "ServiceAppArgs",
    "executor_settings",
    "service_settings",
]

INGRESS_NUM_CPUS = 0.0
"""The ingress mostly waits (on executors, the database, Redis), like Serve's own proxy (which
reserves none either); the cores are reserved by the executors, one per slot."""
INGRESS_MAX_ONGOING_REQUESTS = 1000
"""Requests one ingress replica holds at once; waiting ones mostly wait on the executors, whose
own bounded queue (``EXECUTOR_MAX_QUEUED_REQUESTS``) answers 503 beyond it."""
DEFAULT_INGRESS_TARGET_ONGOING_REQUESTS = 100.0
"""An ingress replica mostly waits on executors: add replicas only when it is really busy."""
INGRESS_DRAIN_MARGIN_S = 30.0
"""How much longer an ingress replica drains than the executors by default, seconds: its
requests wait on theirs, so it must outlast their drain to answer them (and store their
records) rather than be killed with them in hand."""


class _Args(ReplicaRange):
    """A deployment's arguments: unknown keys refused; ``min_replicas <= max_replicas`` checked
    by :class:`~executors.ReplicaRange`, the rest of the scaling here."""

    upscale_delay_s: float | None = Field(
        default=None,
        ge=0,
        description="Seconds the autoscaler must want more replicas before it adds them "
        "(default: Serve's, 30).",
    )
    downscale_delay_s: float | None = Field(
        default=None,
        ge=0,
        description="Seconds the autoscaler must want fewer replicas before it removes them "
        "(default: Serve's, 600).",
    )

    def scaling_delays(self) -> dict[str, float]:
        """The delays set, as Serve's ``autoscaling_config`` keys (the others: Serve's)."""
        delays = {
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }
        return {name: delay for name, delay in delays.items() if delay is not None}

    @model_validator(mode="after")
    def _check_queues(self) -> Self:
        target: float | None = getattr(self, "target_ongoing_requests", None)
        ongoing: int | None = getattr(self, "max_ongoing_requests", None)
        if target is not None and ongoing is not None and target > ongoing:
            # A replica never holds more than max_ongoing_requests: the autoscaler would
            # never see its target reached, and never scale up.
            raise ValueError("target_ongoing_requests must not exceed max_ongoing_requests")
        queued: int | None = getattr(self, "max_queued_requests", None)
        if queued is not None and queued != -1 and queued < 1:
            raise ValueError("max_queued_requests must be -1 (no cap) or at least 1")
        return self


class IngressArgs(_Args):
    """The HTTP ingress (:class:`~serve_app.deployment.ApiIngress`): Serve's autoscaler keeps
    between ``min_replicas`` and ``max_replicas``, aiming at ``target_ongoing_requests`` per
    replica; a replica holds ``max_ongoing_requests`` at once, and the proxy queues at most
    ``max_queued_requests`` beyond that (-1: no cap; more are answered 503);
    ``upscale_delay_s`` and ``downscale_delay_s`` default to Serve's autoscaler's own."""

    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=DEFAULT_INGRESS_TARGET_ONGOING_REQUESTS, gt=0)
    max_ongoing_requests: int = Field(default=INGRESS_MAX_ONGOING_REQUESTS, ge=1)
    max_queued_requests: int = -1
    num_cpus: float = Field(default=INGRESS_NUM_CPUS, ge=0)
    label_selector: dict[str, str] | None = None
    """Ray node labels the replicas must run on (``"!value"``: any node but those)."""
    graceful_shutdown_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Drain time of an ingress replica, seconds: longer than the executors' "
        "(checked); default theirs plus INGRESS_DRAIN_MARGIN_S (30).",
    )

    def drain_s(self, executors_drain_s: float) -> float:
        """This ingress' drain time, beside executors draining for ``executors_drain_s``."""
        if self.graceful_shutdown_timeout_s is None:
            return executors_drain_s + INGRESS_DRAIN_MARGIN_S
        return self.graceful_shutdown_timeout_s


class ExecutorArgs(_Args):
    """The executor pool (:class:`~executors.SandboxExecutor`); ``None``: from the settings.

    ``slots`` is ``MAX_CONCURRENT_EXECUTIONS``, ``min_replicas``/``max_replicas``
    ``EXECUTOR_NUM_REPLICAS_MIN``/``_MAX``, ``max_queued_requests`` (per caller)
    ``EXECUTOR_MAX_QUEUED_REQUESTS``. ``num_cpus`` defaults to one per slot, ``memory_bytes``
    to the replica's 512 MiB plus ``MAX_MEMORY_MB`` and 160 MiB per slot,
    ``target_ongoing_requests`` to one per slot (every slot busy), ``max_ongoing_requests`` to
    :func:`~serve_app.deployment.executor_app`'s default; ``upscale_delay_s`` and
    ``downscale_delay_s`` to Serve's autoscaler's own.
    """

    slots: int | None = Field(default=None, ge=1)
    num_cpus: float | None = Field(default=None, gt=0)
    memory_bytes: int | None = Field(default=None, gt=0)
    """Memory Ray reserves per replica (its ``memory`` resource)."""
    target_ongoing_requests: float | None = Field(default=None, gt=0)
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    max_queued_requests: int | None = None
    label_selector: dict[str, str] | None = None
    """Ray node labels the replicas must run on."""


class ServiceAppArgs(BaseModel):
    """The ``args`` of the service application in a Serve config (``serve run``, KubeRay)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ingress: IngressArgs = IngressArgs()
    executor: ExecutorArgs = ExecutorArgs()
    graceful_shutdown_timeout_s: float | None = Field(default=None, gt=0)
    """Drain time of the executors (and the ingress' base: ``ingress.graceful_shutdown_timeout_s``);
    default ``GRACEFUL_SHUTDOWN_TIMEOUT_S``."""
    require_full_isolation: bool = False
    """True: refuse to start an executor missing a sandbox layer, whatever ``ENVIRONMENT``
    (production always refuses; this can only strengthen the settings)."""
    runtime_executors: dict[str, ExecutorArgs] = Field(default_factory=dict)
    """Runtimes (``executors.RUNTIMES``) with an executor deployment of their own
    (``SandboxExecutor-<runtime>``, its zygotes preloaded at start), sized and placed by their
    own arguments (slots, replicas and queue left out: as ``executor``'s; ``label_selector``:
    e.g. a worker group of their own); the ingress sends their executions there, every other one
    to ``executor``."""

    @model_validator(mode="after")
    def _check_runtimes(self) -> Self:
        unknown = sorted(set(self.runtime_executors) - set(RUNTIMES))
        if unknown:
            raise ValueError(
                f"runtime_executors: unknown runtime {', '.join(map(repr, unknown))}: "
                f"one of {', '.join(RUNTIMES)}"
            )
        return self


def service_settings(args: ServiceAppArgs) -> PublicSettings:
    """The settings from the environment, with ``args``' overrides, validated together; each
    of ``args.runtime_executors`` is validated as well (:func:`executor_settings`). Without a
    secret (:class:`PublicSettings`): none is read, nor needed, nor refused as a placeholder.

    Raises :class:`~serve_app.errors.ConfigurationError` naming what is wrong.
    """
    overrides: dict[str, Any] = {
        **_executor_overrides(args.executor),
        "graceful_shutdown_timeout_s": args.graceful_shutdown_timeout_s,
        "sandbox_require_full_isolation": True if args.require_full_isolation else None,
    }
    settings = _validated({name: value for name, value in overrides.items() if value is not None})
    _check_target(settings, args.executor, "executor")
    if args.ingress.drain_s(settings.graceful_shutdown_timeout_s) <= (
        settings.graceful_shutdown_timeout_s
    ):
        raise ConfigurationError(
            "ingress.graceful_shutdown_timeout_s must exceed the executors' drain "
            f"({settings.graceful_shutdown_timeout_s:g} s): its requests wait on theirs"
        )
    for runtime, executor in args.runtime_executors.items():
        executor_settings(settings, executor, runtime)
    return settings


def executor_settings(settings: Settings, executor: ExecutorArgs, runtime: str) -> Settings:
    """``settings`` with the overrides of ``runtime``'s own executor (its slots, replicas and
    queue), validated together (as :class:`PublicSettings`); what that executor deployment is
    sized by.

    Raises :class:`~serve_app.errors.ConfigurationError` naming what is wrong.
    """
    overrides = _executor_overrides(executor)
    sized = _validated({**settings.public().model_dump(), **overrides}) if overrides else settings
    _check_target(sized, executor, f"runtime_executors.{runtime}")
    return sized


def _executor_overrides(executor: ExecutorArgs) -> dict[str, Any]:
    overrides = {
        "max_concurrent_executions": executor.slots,
        "executor_num_replicas_min": executor.min_replicas,
        "executor_num_replicas_max": executor.max_replicas,
        "executor_max_queued_requests": executor.max_queued_requests,
    }
    return {name: value for name, value in overrides.items() if value is not None}


def _validated(values: dict[str, Any]) -> PublicSettings:
    try:
        return PublicSettings(**values)
    except ValidationError as exc:
        raise ConfigurationError(
            "invalid configuration: " + describe_validation_error(exc)
        ) from None


def _check_target(settings: Settings, executor: ExecutorArgs, where: str) -> None:
    ongoing = executor.max_ongoing_requests
    target = executor.target_ongoing_requests or settings.max_concurrent_executions
    if ongoing is not None and target > ongoing:
        # The target defaults to one per slot: a replica held below it never scales up.
        raise ConfigurationError(
            f"invalid configuration: {where} target_ongoing_requests (default: slots) must "
            "not exceed its max_ongoing_requests"
        )
