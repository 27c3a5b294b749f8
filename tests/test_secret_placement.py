"""Secrets only where they are needed: the API ingress replica, nowhere else in Ray.

Ray keeps what is bound to a deployment, its ``runtime_env`` and Serve's application configs
in its GCS, which every node reads (the privileged sandbox nodes included), and every worker
inherits its raylet's environment. With distinctive secrets (``API_KEY_SECRET``, a
``DATABASE_URL``, ``SENTRY_DSN`` and the client's ``EXEC_AGENT_API_KEY``; ``REDIS_URL`` is
left out here, the ingress would dial it: the builder's test covers it), a real ``exec-agent
serve`` runs one execution and one session call, so that every actor exists, and then:

- joined to the session's Ray: no secret in Serve's status and application details, nor in any
  key or value of the GCS internal KV (every namespace), nor in the GCS actor table (raw
  bytes), nor in the environment or command line of any actor's process;
- starting a Ray of its own: no secret in the environment or command line of any process of
  that Ray (GCS, raylet, every worker: executors, session hosts, the ingress itself), only in
  the ``exec-agent serve`` driver's;
- both times a key made by ``exec-agent keys create`` (which hashes with ``API_KEY_SECRET``)
  authenticates: the secret reached the ingress, through its secrets directory;
- and, with no Ray, what the application builder returns (pickled as Ray would) holds none.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray import cloudpickle  # Ray's own: what pickles bound arguments into its GCS

from serve_app.deployment import app_builder
from serve_app.settings import Settings
from tests.support.api import auth
from tests.support.live_server import LiveServer, live_server
from tests.support.processes import descendants
from tests.support.scripts import load_script
from tests.support.settings import use_settings_environment

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

TOKEN = secrets.token_hex(8)
API_KEY_SECRET = f"api-key-secret-{TOKEN}-0123456789abcdef"
DATABASE_MARKER = f"database-password-{TOKEN}"
SENTRY_MARKER = f"sentrykey{TOKEN}"
CLIENT_KEY = f"ea-client-key-{TOKEN}"
REDIS_MARKER = f"redis-password-{TOKEN}"
MARKERS = (API_KEY_SECRET, DATABASE_MARKER, SENTRY_MARKER, CLIENT_KEY)
"""What must appear nowhere (the database's is in its file name: SQLite has no password)."""


def secret_environment(workdir: Path) -> dict[str, str]:
    return {
        "API_KEY_SECRET": API_KEY_SECRET,
        "DATABASE_URL": f"sqlite:///{workdir / DATABASE_MARKER}.db",
        # Never dialled but for an error report (none here): the discard port of loopback.
        "SENTRY_DSN": f"http://{SENTRY_MARKER}@127.0.0.1:9/1",
        "EXEC_AGENT_API_KEY": CLIENT_KEY,
    }


def found_in(data: bytes | str, where: str) -> list[str]:
    """``where`` for each marker in ``data``."""
    raw = data.encode() if isinstance(data, str) else data
    return [f"{where}: {marker}" for marker in MARKERS if marker.encode() in raw]


def process_leaks(pid: int) -> list[str] | None:
    """The markers in ``pid``'s environment and command line; None if unreadable (gone)."""
    leaks = []
    try:
        for part in ("environ", "cmdline"):
            leaks += found_in(Path(f"/proc/{pid}/{part}").read_bytes(), f"pid {pid} {part}")
    except OSError:
        return None
    return leaks


def use_the_service(url: str, key: str) -> None:
    """One execution and one session call: every actor of the service is up."""
    with httpx.Client(base_url=url, headers=auth(key), timeout=180) as client:
        ran = client.post("/v1/executions", json={"code": "print(6 * 7)", "runtime": "minimal"})
        assert ran.status_code == 200, ran.text
        assert ran.json()["stdout"] == "42\n"
        created = client.post("/v1/sessions", json={"runtime": "minimal"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        called = client.post(f"/v1/sessions/{sid}/executions", json={"code": "print('held')"})
        assert called.status_code == 200, called.text
        assert called.json()["stdout"] == "held\n"
        # A wrong key is refused: the service checks keys, it does not wave them through.
        wrong = client.post("/v1/executions", json={"code": "1"}, headers=auth(key + "x"))
        assert wrong.status_code == 401, wrong.text


# --- exec-agent serve with a Ray of its own: first, so that one Ray runs at a time


def test_a_local_ray_gets_no_secret_in_any_process_but_the_driver(tmp_path: Path) -> None:
    serve_process = load_script("serve_process")
    service = serve_process.ServeProcess(
        tmp_path,
        slots=1,
        extra_env={**secret_environment(tmp_path), "SESSION_HOSTS_MIN": "0"},
    )
    try:
        service.start()
        key = service.create_key("placement")
        use_the_service(service.url, key)
        assert service.pid is not None
        below = descendants(service.pid)
        commands = " ".join(process.cmdline for process in below)
        for part in ("gcs_server", "raylet", "ServeReplica:exec-agent:SandboxExecutor"):
            assert part in commands, f"no {part} below exec-agent serve:\n{commands[:3000]}"
        assert "SessionHost" in commands, commands[:3000]
        read = {process.pid: process_leaks(process.pid) for process in below}
        leaks = [leak for found in read.values() for leak in found or ()]
        assert leaks == []
        # The driver itself had them (its own environment: that is where they come from).
        assert process_leaks(service.pid)
    finally:
        service.stop()
        service.kill_group()


# --- exec-agent serve joined to the session's Ray: its GCS scanned


@pytest.fixture(scope="module")
def server(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("secret-placement")
    with live_server(workdir, **secret_environment(workdir)) as running:
        use_the_service(running.url, running.key)
        yield running


def kv_namespaces() -> list[bytes]:
    """Every namespace Ray's own code names for the internal KV (its modules' ``*NAMESPACE``
    and ``KV_NAMESPACE_*`` constants): the test below checks that they cover every key."""
    import ray._raylet
    from ray._common.usage import usage_constants
    from ray._private import ray_constants
    from ray.serve._private.storage import kv_store

    names = {b""}
    for module in (ray_constants, ray._raylet, usage_constants, kv_store):
        for name in dir(module):
            value = getattr(module, name)
            if ("KV_NAMESPACE" in name or name.endswith("_NAMESPACE")) and (
                value is None or isinstance(value, str | bytes)
            ):
                names.add(value.encode() if isinstance(value, str) else value or b"")
    return sorted(names)


def test_the_gcs_internal_kv_holds_no_secret(server: LiveServer) -> None:
    from ray.experimental import internal_kv

    gcs = internal_kv.global_gcs_client
    # Listed without a namespace, the keys of every namespace come (their namespace cut off).
    keys = set(gcs.internal_kv_keys(b"", None))
    assert any(b"serve" in key.lower() for key in keys), sorted(keys)[:50]
    leaks: list[str] = []
    unread = set(keys)
    scanned = 0
    for namespace in kv_namespaces():
        for key in gcs.internal_kv_keys(b"", namespace):
            value = gcs.internal_kv_get(key, namespace)
            if value is None:
                continue
            unread.discard(key)
            scanned += len(value)
            leaks += found_in(key, f"key {key[:80]!r} ({namespace!r})")
            leaks += found_in(value, f"value of {key[:80]!r} ({namespace!r})")
    assert leaks == []
    # Every key was read in one namespace or another: the scan missed nothing.
    assert unread == set(), sorted(unread)
    assert scanned > 0


def test_the_gcs_actor_table_holds_no_secret(server: LiveServer) -> None:
    from ray._private.state import state

    table = state._connect_and_get_accessor().get_actor_table(None, None)
    assert len(table) >= 4  # controller, proxy, ingress, executor, session host
    leaks = [leak for entry in table for leak in found_in(entry, "actor table")]
    assert leaks == []


def test_serve_status_and_application_details_hold_no_secret(server: LiveServer) -> None:
    from ray import serve
    from ray.serve.context import _get_global_client

    status = serve.status()
    assert "exec-agent" in status.applications
    details = _get_global_client().get_serve_details()
    deployments = details["applications"]["exec-agent"]["deployments"]
    assert {"ApiIngress", "SandboxExecutor"} <= set(deployments)
    leaks = found_in(repr(status), "serve.status()")
    leaks += found_in(json.dumps(details, default=str), "the controller's details")
    assert leaks == []


def test_no_actor_process_has_a_secret_in_its_environment(server: LiveServer) -> None:
    import ray._private.state

    actors = [
        actor
        for actor in ray._private.state.actors().values()
        if actor["State"] == "ALIVE" and actor["Pid"]
    ]
    classes = " ".join(actor["ActorClassName"] for actor in actors)
    for wanted in ("SandboxExecutor", "SessionHost", "ApiIngress"):
        assert wanted in classes, classes
    leaks: list[str] = []
    read = 0
    for actor in actors:
        found = process_leaks(actor["Pid"])
        if found is not None:
            read += 1
            leaks += [f"{actor['ActorClassName']}: {leak}" for leak in found]
    assert leaks == []
    assert read >= 3


def test_the_ingress_got_the_secret_through_its_directory(server: LiveServer) -> None:
    """``exec-agent keys create`` hashed the key with API_KEY_SECRET: the ingress, which has it
    from no environment, knows it (use_the_service ran with that key)."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        listed = client.get("/v1/runtimes", headers=auth(server.key))
        assert listed.status_code == 200, listed.text
        assert client.get("/v1/runtimes", headers=auth("ea_" + TOKEN)).status_code == 401


# --- the builder's output, without any Ray


def test_the_builders_application_pickles_without_a_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environment = {
        **secret_environment(tmp_path),
        "REDIS_URL": f"redis://:{REDIS_MARKER}@127.0.0.1:6379/0",
        "ENVIRONMENT": "production",  # no placeholder refused: the builder reads no secret
        "SECRETS_DIR": str(tmp_path / "mounted-on-the-api-pods-only"),
    }
    (tmp_path / "mounted-on-the-api-pods-only").mkdir()  # empty: the secrets are in the env
    use_settings_environment(monkeypatch, tmp_path, environment)
    app = app_builder({"runtime_executors": {"minimal": {}}})
    pickled = cloudpickle.dumps(app)
    markers = (*MARKERS, REDIS_MARKER)
    assert [marker for marker in markers if marker.encode() in pickled] == []
    bound = app._bound_deployment
    assert bound.init_kwargs["secrets_dir"] is None  # the ingress's own SECRETS_DIR then
    assert bound.init_args[0].environment == "production"
    # Full settings in that environment do carry them: the check above can fail.
    full = Settings(environment="local")
    assert all(marker.encode() in cloudpickle.dumps(full) for marker in markers)


def test_full_settings_reach_the_ingress_as_a_directory_path(tmp_path: Path) -> None:
    """``service_app`` given full settings (``exec-agent serve``, the tests) binds their public
    part and the path of a private directory of their secrets, never the secrets."""
    from serve_app.deployment import executor_app, service_app

    settings = Settings(
        _env_file=None,
        api_key_secret=API_KEY_SECRET,
        database_url=f"sqlite:///{tmp_path / DATABASE_MARKER}.db",
        redis_url=f"redis://:{REDIS_MARKER}@127.0.0.1:6379/0",
    )
    assert API_KEY_SECRET.encode() in cloudpickle.dumps(settings)
    app = service_app(settings, executor_app(settings))
    assert [m for m in (API_KEY_SECRET, REDIS_MARKER) if m.encode() in cloudpickle.dumps(app)] == []
    directory = Path(app._bound_deployment.init_kwargs["secrets_dir"])
    assert (directory / "API_KEY_SECRET").read_text() == API_KEY_SECRET
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
