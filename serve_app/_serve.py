"""``exec-agent serve``: the HTTP service on Ray Serve, until SIGINT or SIGTERM.

Applies the database migrations, starts a local Ray (or joins ``RAY_ADDRESS``), deploys the
executor pool and the API ingress with Serve's HTTP proxy on ``HOST:PORT``, prints the URL, and
waits. On a signal it deletes the application (Serve drains the replicas: ongoing requests
finish, background runs get ``GRACEFUL_SHUTDOWN_TIMEOUT_S``) and stops Ray if it started it.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from serve_app import _exit

if TYPE_CHECKING:
    from serve_app.settings import Settings

__all__ = ["APP_NAME", "main"]

APP_NAME = "exec-agent"


def main(settings: Settings) -> int:
    """Serve until interrupted; 0 after a clean drain."""
    import ray
    from ray import serve

    from serve_app._local_demo import _start_ray, executor_app
    from serve_app.db import migrate
    from serve_app.http import service_app

    migrate.upgrade(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        print(f"exec-agent serve: {signal.Signals(signum).name}, draining", file=sys.stderr)
        stop.set()

    joined = settings.ray_address is not None
    context = _start_ray(settings)
    # After ray.init: it installs a SIGTERM handler of its own that would end us undrained.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if context.dashboard_url:
            print(f"Ray dashboard: http://{context.dashboard_url}", file=sys.stderr)
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(service_app(settings, executor_app(settings)), name=APP_NAME, route_prefix="/")
        url = f"http://{settings.host}:{settings.port}"
        print(f"exec-agent: serving the API on {url}", flush=True)
        print("get an API key with: exec-agent keys create --name NAME", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        if joined:
            serve.delete(APP_NAME)  # a shared cluster's other applications stay up
        else:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _exit.EX_OK
