"""The service's defaults for what a mapper's caller leaves out, found through an entry point
(the engine never imports the service)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

from executors._config import SandboxConfig
from executors._errors import PipelineConfigurationError
from executors._models import Limits

__all__ = ["DEFAULTS_ENTRY_POINTS", "PipelineDefaults", "service_defaults"]

DEFAULTS_ENTRY_POINTS = "exec_agent.pipeline_defaults"
"""Where a service offers the pipeline its defaults: one entry point, a callable returning
:class:`PipelineDefaults` (``serve_app.settings:pipeline_defaults``)."""


@dataclass(frozen=True)
class PipelineDefaults:
    """What a mapper uses for what its caller left out."""

    default_limits: Limits
    max_limits: Limits
    sandbox_config: SandboxConfig


def service_defaults() -> PipelineDefaults:
    """The installed service's defaults (:data:`DEFAULTS_ENTRY_POINTS`); raise
    :class:`PipelineConfigurationError` when none is installed."""
    found = entry_points(group=DEFAULTS_ENTRY_POINTS)
    if not found:
        raise PipelineConfigurationError(
            "no service installed to take defaults from: pass default_limits, max_limits and "
            "sandbox_config"
        )
    defaults = next(iter(found)).load()()
    if not isinstance(defaults, PipelineDefaults):
        raise PipelineConfigurationError(f"{DEFAULTS_ENTRY_POINTS} gave {type(defaults).__name__}")
    return defaults
