"""What ``exec-agent serve`` tells a person at a terminal once it serves: a short summary.

:func:`serve_summary` builds it from the settings and the addresses Ray gave (a pure function:
no Ray, no terminal); :func:`print_summary` writes it with rich. Where standard output is not
a terminal, ``exec-agent serve`` prints its machine-readable lines instead.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from executors.telemetry import redact

if TYPE_CHECKING:
    from serve_app.settings import Settings

__all__ = [
    "ServeSummary",
    "browse_url",
    "installed_command",
    "mask_database_url",
    "print_summary",
    "serve_summary",
]

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}  # noqa: S104 - matched, not bound


@dataclass(frozen=True)
class ServeSummary:
    """A title line and labelled rows (label, value), in the order they are shown."""

    title: str
    rows: tuple[tuple[str, str], ...]


def browse_url(host: str, port: int) -> str:
    """The address a person opens for ``host:port``: loopback for a wildcard host (which
    listens on every interface, loopback included)."""
    host = _WILDCARDS.get(host, f"[{host}]" if ":" in host and not host.startswith("[") else host)
    return f"http://{host}:{port}"


def installed_command(name: str, cwd: Path | None = None, executable: str | None = None) -> str:
    """How a person in ``cwd`` (default: this process's) runs the command ``name`` installed
    beside this Python (``exec-agent``, ``ray``; or the file ``executable``): ``name`` when
    PATH finds this one, else its path, relative to ``cwd`` when under it
    (``.venv/bin/exec-agent`` in the repository), else absolute."""
    ours = Path(executable or Path(sys.executable).with_name(name)).absolute()
    found = shutil.which(name)
    if found is not None and Path(found).absolute() == ours:
        return name
    here = (cwd or Path.cwd()).absolute()
    if not ours.is_relative_to(here):
        return str(ours)
    relative = os.path.relpath(ours, here)
    return relative if os.sep in relative else f".{os.sep}{relative}"  # not a PATH lookup


def mask_database_url(url: str) -> str:
    """``url`` with its password masked (``***``); anything unparsable through
    :func:`executors.telemetry.redact`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return redact(url)


def serve_summary(
    settings: Settings,
    *,
    api_url: str,
    command: str,
    ingress: str | None = None,
    dashboard_url: str | None = None,
    dashboard_token: str | None = None,
    metrics_url: str | None = None,
) -> ServeSummary:
    """What ``exec-agent serve`` shows once it serves at ``api_url``: how to get a key (with
    ``command``, :func:`installed_command`), the documentation and the playground (when the
    settings serve them), Ray's dashboard (``None``: none to show; ``dashboard_token``: the
    command that prints the token it asks for), the cluster joined (``RAY_ADDRESS``), the
    Prometheus metrics, the database (password masked) and how to stop."""
    via = f" (ingress: {ingress})" if ingress else ""
    rows: list[tuple[str, str]] = [
        ("API key", f"{command} keys create --name NAME"),
        ("Docs", f"{api_url}/docs" if settings.api_docs else "off (API_DOCS=false)"),
        ("Playground", f"{api_url}/" if settings.playground else "off (PLAYGROUND=false)"),
    ]
    if dashboard_url:
        token = f" (its token: {dashboard_token})" if dashboard_token else ""
        rows.append(("Ray dashboard", dashboard_url + token))
    if settings.ray_address is not None:
        rows.append(("Ray cluster", settings.ray_address))
    if metrics_url:
        rows.append(("Metrics", f"{metrics_url} (Prometheus)"))
    rows.append(("Database", mask_database_url(settings.database_url)))
    rows.append(("Stop", "Ctrl-C (drains: running requests finish first)"))
    return ServeSummary(title=f"exec-agent is serving the API at {api_url}{via}", rows=tuple(rows))


def print_summary(summary: ServeSummary, stream: TextIO | None = None) -> None:
    """Write ``summary`` to ``stream`` (default: standard output) with rich, between blank
    lines: the title in bold, the labels dimmed (plain text where the stream is not a
    terminal)."""
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
    width = max((len(label) for label, _ in summary.rows), default=0)
    console.print()
    console.print(Text(summary.title, style="bold green"))
    for label, value in summary.rows:
        console.print(Text.assemble(("  " + label.ljust(width) + "  ", "dim"), value))
    console.print()
