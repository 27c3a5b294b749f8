"""Drills: faults and load against real local deployments, and proof that nothing is lost.

One Serve deployment (ingress + a 2-slot executor, SQLite in a temporary directory, a small
executor queue) in the session's Ray serves the in-process drills; the others start
``exec-agent serve`` (or ``scripts/soak.py``) as a subprocess with a Ray of its own, on free
ports, never touching the session's Ray. What ``test_http_resilience.py`` already covers
(PostgreSQL and Redis outages, a burst against the queue, takeover, a client that disconnects)
is not repeated here.

    a. an executor replica killed under running executions
    b. far more concurrent requests than slots: fast refusals, bounded memory, nothing lost
    c. ``exec-agent serve`` stopped by SIGTERM under load: every accepted execution terminal
    d. a sandbox layer missing: readiness degraded; in production, the service refuses to start
    e. ``scripts/soak.py`` end to end (short)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from serve_app.db import Database, keys, migrate
from tests.support.api import auth, error_code, run
from tests.support.databases import postgres_schema
from tests.support.interpreters import direct_mode_runtime, reachable_interpreter
from tests.support.paths import SCRIPTS
from tests.support.polling import eventually
from tests.support.processes import (
    HostProcess,
    alive,
    descendants,
    host_processes,
    slot_zygotes,
)
from tests.support.scripts import load_script
from tests.support.service import DeployedService, deployed_service, service_settings
from tests.support.statuses import TERMINAL

pytestmark = [pytest.mark.ray, pytest.mark.sandbox, pytest.mark.slow]

APP_NAME = "exec-agent-drills"
EXECUTOR_NAME = "SandboxExecutor"
INGRESS_NAME = "ApiIngress"
SECRET = SecretStr("drills-test-api-key-secret-0123456789abcdef")
SLOTS = 2
QUEUED = 2
SLOT_UID_BASE = 60000
SLOT_UIDS = range(SLOT_UID_BASE, SLOT_UID_BASE + SLOTS)
"""The engine's default: the deployment's slots run as these host uids."""
SLEEPER = "import time\ntime.sleep(3)\nprint('slept')"


# --- host processes


def replica_pids(app: str, deployment: str) -> list[int]:
    """Pids of the Ray workers that hold a replica of ``app``'s ``deployment`` (by title)."""
    title = f"ray::ServeReplica:{app}:{deployment}"
    return [p.pid for p in host_processes() if p.cmdline.startswith(title) and not p.zombie]


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def zygotes_under(pid: int) -> list[HostProcess]:
    """The slots' fork servers below ``pid`` (not their spares)."""
    return slot_zygotes(descendants(pid), SLOT_UIDS)


# --- the in-process deployment (drills a, b, d)


@dataclass
class Deployment(DeployedService):
    def executor(self) -> Any:
        from ray import serve

        return serve.get_deployment_handle(EXECUTOR_NAME, APP_NAME)


@pytest.fixture(scope="module")
def deployment(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory: Path = tmp_path_factory.mktemp("drills")
    settings = service_settings(
        f"sqlite:///{directory / 'drills.db'}",
        SECRET,
        rate_limit_per_minute=100_000,
        max_concurrent_per_key=1000,
        max_concurrent_executions=SLOTS,
        executor_max_queued_requests=QUEUED,
    )
    with deployed_service(settings, APP_NAME) as database:
        yield Deployment(database, settings)


def post(url: str, key: str, code: str, **fields: object) -> tuple[httpx.Response, float]:
    """One execution on a client of its own; the answer and how long it took."""
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=120) as http:
        response = run(http, key, code, **fields)
    return response, time.monotonic() - started


# --- a. an executor replica dies under running executions

IN_FLIGHT = SLOTS + QUEUED
"""As many runs as the replica takes at once: two in the slots, two waiting inside it."""


@dataclass
class Kill:
    """What drill a saw: the answers of the runs in flight, the replica before and after."""

    key_name: str
    answers: list[httpx.Response]
    later: httpx.Response
    victim: int
    sandbox: set[tuple[int, float]]
    """The killed replica's processes below it (bubblewrap, zygotes, spares, jobs)."""
    replacement: int
    done_before_kill: int
    """Runs already answered when the replica was killed (none, for the drill to mean much)."""
    cgroups: list[Path]
    """The killed replica's pool cgroups (one per hierarchy)."""
    replaced_after_s: float


def pool_cgroups(pid: int) -> list[Path]:
    """The cgroups of ``pid``'s sandbox pool (``exec-agent-<pid>-<random>``, in each
    hierarchy of the cgroup ``pid`` is in)."""
    found: list[Path] = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            base = Path("/sys/fs/cgroup", controller, path.lstrip("/"))
            if not controller.startswith("name=") and base.is_dir():
                found += base.glob(f"exec-agent-{pid}-*")
    return found


@pytest.fixture(scope="module")
def killed_replica(deployment: Deployment) -> Iterator[Kill]:
    """Runs in flight (two in the slots, two queued in the replica), then SIGKILL for the
    executor replica's process, as the kernel's OOM killer or a crash would end it."""
    key_name = "replica-killed"
    key = deployment.new_key(key_name)
    [victim] = replica_pids(APP_NAME, EXECUTOR_NAME)
    assert deployment.executor().stats.remote().result(timeout_s=30)["pid"] == victim
    assert len(zygotes_under(victim)) == SLOTS
    sandbox = {p.key for p in descendants(victim)}
    cgroups = pool_cgroups(victim)
    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        futures = []
        for _ in range(IN_FLIGHT):  # one by one: a burst would meet the router's small queue
            futures.append(pool.submit(post, deployment.url, key, SLEEPER))
            time.sleep(0.3)
        eventually(
            lambda: len(deployment.stored(key_name)) == IN_FLIGHT or any(f.done() for f in futures),
            30,
            "every run is accepted",
        )
        time.sleep(0.7)  # the first two are inside their sandboxes
        sandbox |= {p.key for p in descendants(victim)}  # the jobs too
        done_before_kill = sum(future.done() for future in futures)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        answers = [future.result()[0] for future in futures]
    replacement = eventually(
        lambda: [pid for pid in replica_pids(APP_NAME, EXECUTOR_NAME) if pid != victim],
        90,
        "Serve starts a new executor replica",
    )
    replaced_after_s = time.monotonic() - killed_at
    later = post(deployment.url, key, "print('after the kill')")[0]
    yield Kill(
        key_name,
        answers,
        later,
        victim,
        sandbox,
        replacement[0],
        done_before_kill,
        cgroups,
        replaced_after_s,
    )
    for group in cgroups:  # if the product left any: never on the host
        for directory in [*group.glob("slot-*"), group]:
            with contextlib.suppress(OSError):
                directory.rmdir()


def test_a_killed_executor_replica_ends_each_run_once(
    deployment: Deployment, killed_replica: Kill
) -> None:
    """Each run in flight is retried once (on the replica Serve starts instead) or ends as
    ``internal_error``; none is refused or lost, and each has exactly one terminal record."""
    kill = killed_replica
    assert kill.done_before_kill == 0, "a run ended before the kill"
    outcomes = []
    for response in kill.answers:
        assert response.status_code == 200, response.text
        record = response.json()
        outcomes.append((record["status"], record["stdout"]))
    assert set(outcomes) <= {("ok", "slept\n"), ("internal_error", "")}, outcomes
    assert kill.later.status_code == 200, kill.later.text
    assert kill.later.json()["stdout"] == "after the kill\n"
    rows = deployment.stored(kill.key_name)
    answered = [r.json()["id"] for r in [*kill.answers, kill.later]]
    assert sorted(str(row.id) for row in rows) == sorted(answered)
    assert all(str(row.status) in TERMINAL for row in rows), [str(r.status) for r in rows]
    by_id = {str(row.id): str(row.status) for row in rows}
    assert [by_id[r.json()["id"]] for r in kill.answers] == [s for s, _ in outcomes]


def test_a_killed_executor_replica_leaves_no_sandbox_process(
    deployment: Deployment, killed_replica: Kill
) -> None:
    """Serve replaced the replica by itself; nothing of the dead one's sandboxes runs on, and
    the new one's slots are the only processes of the slots' uids."""
    kill = killed_replica
    assert kill.replacement != kill.victim
    eventually(lambda: not alive(kill.sandbox), 15, "the killed replica's sandboxes are gone")
    assert len(zygotes_under(kill.replacement)) == SLOTS
    ours = {p.key for p in descendants(kill.replacement)}
    strays = [p for p in host_processes() if p.uid in SLOT_UIDS and p.key not in ours]
    assert not strays, "\n".join(map(str, strays))
    operator = auth(deployment.new_key("ready-operator"))  # the details
    ready = httpx.get(deployment.url + "/health/ready", headers=operator, timeout=30).json()
    assert ready["checks"]["executors"]["ok"], ready
    assert ready["checks"]["executors"]["alive_slots"] == SLOTS


def test_a_killed_executor_replicas_cgroups_are_removed(killed_replica: Kill) -> None:
    """The replacement replica's pool removes the groups the killed one left."""
    assert killed_replica.cgroups, "the pool had cgroups"
    left = [path for path in killed_replica.cgroups if path.exists()]
    assert not left, left


# --- b. overload: far more requests than slots

BURST = 60
SHORT_SLEEPER = "import time\ntime.sleep(0.5)\nprint('slept')"
MAX_RSS_GROWTH_BYTES = 200 * 1024 * 1024


def test_overload_is_refused_fast_and_admitted_runs_complete(deployment: Deployment) -> None:
    """60 runs at once on 2 slots (2 more waiting in the replica, 2 in the ingress' handle):
    the excess is refused at once with 503 ``overloaded`` and ``Retry-After``, every admitted
    run completes and is stored once, and the ingress replica's memory stays bounded."""
    key_name = "overload"
    key = deployment.new_key(key_name)
    [ingress] = replica_pids(APP_NAME, INGRESS_NAME)
    before = rss_bytes(ingress)
    start = threading.Barrier(BURST)

    def one(_: int) -> tuple[httpx.Response, float]:
        start.wait()
        return post(deployment.url, key, SHORT_SLEEPER)

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        answers = list(pool.map(one, range(BURST)))
    after = rss_bytes(ingress)

    admitted = [(r, s) for r, s in answers if r.status_code == 200]
    refused = [(r, s) for r, s in answers if r.status_code == 503]
    assert len(admitted) + len(refused) == BURST, [r.status_code for r, _ in answers]
    assert SLOTS <= len(admitted) < BURST
    # Most of the burst is refused: far fewer fit than were sent.
    assert len(refused) > len(admitted), (len(admitted), len(refused))
    for response, seconds in refused:
        assert error_code(response) == "overloaded", response.text
        assert int(response.headers["retry-after"]) >= 1
        assert seconds < 30, "a refusal does not wait for the runs ahead of it"
    for response, seconds in admitted:
        assert (response.json()["status"], response.json()["stdout"]) == ("ok", "slept\n")
        assert seconds < 60
    # Records == admitted: the refused left none.
    rows = deployment.stored(key_name)
    assert sorted(str(row.id) for row in rows) == sorted(r.json()["id"] for r, _ in admitted)
    assert all(str(row.status) == "ok" for row in rows)
    assert after - before < MAX_RSS_GROWTH_BYTES, (before, after)
    later = post(deployment.url, key, "print('after the burst')")[0]
    assert later.status_code == 200, later.text


# --- c. exec-agent serve stopped under load

BACKGROUND_RUNS = 6
WAITED_RUNS = 2
DRAIN_SLEEPER = "import time\ntime.sleep(1.5)\nprint('drained')"


def test_sigterm_under_load_answers_and_records_every_accepted_execution(
    tmp_path: Path,
) -> None:
    """``exec-agent serve`` (its own Ray, SQLite, free ports) gets SIGTERM while background and
    waited runs are in flight: it drains and exits 0; the waiting clients get their answers;
    its database holds a terminal record for every execution it accepted, none queued or
    running; and nothing of it is left: no process, no sandbox cgroup."""
    soak = load_script("soak")
    # Room for every background run: this drill is about the drain, not the queue.
    service = soak.ServeProcess(tmp_path, slots=SLOTS, executor_queue=BACKGROUND_RUNS)
    key = service.create_key("drain")
    try:
        service.start()
        accepted: list[str] = []
        with httpx.Client(base_url=service.url, timeout=120) as http:
            for _ in range(BACKGROUND_RUNS):
                response = run(http, key, DRAIN_SLEEPER, wait=False)
                assert response.status_code == 202, response.text
                accepted.append(response.json()["id"])
        with ThreadPoolExecutor(max_workers=WAITED_RUNS) as pool:
            waited = [
                pool.submit(post, service.url, key, DRAIN_SLEEPER) for _ in range(WAITED_RUNS)
            ]
            time.sleep(1.0)  # all accepted, two of them running
            tree = soak.process_tree(service.process.pid)
            bases = soak.cgroup_bases(service.process.pid)
            if os.geteuid() == 0:  # the slots' cgroups: only root makes them
                assert soak.pool_cgroups(bases, {p.pid for p in tree}), "no pool cgroups seen"
            service.process.send_signal(signal.SIGTERM)
            cut = []
            answers = []
            for future in waited:
                try:
                    answers.append(future.result()[0])
                except httpx.HTTPError as exc:  # asserted below, after the service is gone
                    cut.append(f"{type(exc).__name__}: {exc}")
            exit_code = service.stop()
    finally:
        service.stop()
        service.kill_group()
    assert exit_code == 0, service.log_tail()
    assert not cut, f"waiting clients were cut off: {cut}"
    for response in answers:
        assert response.status_code == 200, response.text
        assert response.json()["status"] in {"ok", "internal_error"}, response.text
        accepted.append(response.json()["id"])
    stored = soak.stored_records(service.database_path)
    assert sorted(stored) == sorted(accepted), "records and accepted executions differ"
    unfinished = {i: s for i, s in stored.items() if s not in TERMINAL}
    assert not unfinished, unfinished
    # Ray ends its workers after the driver: give them a moment, then nothing may be left.
    keys_ = {p.key for p in tree}
    eventually(
        lambda: not [p for p in soak.all_processes() if p.key in keys_],
        30,
        "every process of the stopped service is gone",
    )
    assert not soak.pool_cgroups(bases, {p.pid for p in tree})


# --- d. a sandbox layer missing

DEGRADED_APP = "exec-agent-drills-degraded"
WITHOUT_BUBBLEWRAP = {"bubblewrap", "read_only_root", "uts_namespace"}


def test_without_bubblewrap_readiness_is_degraded_and_names_the_missing_layers(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A deployment whose executors find no bubblewrap runs with what it has (per-job
    namespaces) and says so: ``/health/ready`` answers 503 ``degraded`` with the missing
    layers, while the required checks (database, executors) pass."""
    from ray import serve

    from executors import SandboxConfig, build_executor_app
    from serve_app.deployment import IngressArgs, service_app

    python = reachable_interpreter()
    if python is None:
        pytest.skip("no Python >= 3.11 that the slots' uids can run without bubblewrap")
    settings = deployment.settings.model_copy(
        update={"database_url": f"sqlite:///{tmp_path / 'degraded.db'}"}
    )
    migrate.upgrade(settings)
    database = Database.from_settings(settings)
    config = SandboxConfig(
        bwrap_path="/nonexistent/bwrap",
        python_executable=python,
        slot_uid_base=60100,
        default_runtime=direct_mode_runtime(python),
    )
    executor = build_executor_app(
        config, 1, min_replicas=1, max_replicas=1, num_cpus=0.25, max_queued_requests=2
    )
    try:
        serve.run(
            service_app(settings, executor, IngressArgs(num_cpus=0.05)),
            name=DEGRADED_APP,
            route_prefix="/degraded",
        )
        with database.session() as session:
            key = keys.create_key(session, SECRET, "degraded").plaintext
        with httpx.Client(base_url=deployment.url + "/degraded", timeout=60) as http:
            # The details (the missing layers) are for a caller with a key.
            ready = http.get("/health/ready", headers=auth(key))
            body = ready.json()
            assert (ready.status_code, body["status"]) == (503, "degraded"), body
            sandbox = body["checks"]["sandbox"]
            assert sandbox["ok"] is False and sandbox["mode"] == "direct", sandbox
            assert set(sandbox["missing"]) >= WITHOUT_BUBBLEWRAP, sandbox
            assert body["checks"]["database"]["ok"] and body["checks"]["executors"]["ok"], body
            response = run(http, key, "print('degraded but running')")
            assert response.status_code == 200, response.text
            assert response.json()["stdout"] == "degraded but running\n"
    finally:
        serve.delete(DEGRADED_APP)
        database.dispose()


def path_without_bubblewrap(directory: Path) -> str:
    """A PATH with every command of /usr/bin and /usr/sbin but bwrap (symlinks)."""
    directory.mkdir()
    for source in (Path("/usr/bin"), Path("/usr/sbin")):
        for command in source.iterdir():
            link = directory / command.name
            if command.name != "bwrap" and not link.exists():
                link.symlink_to(command)
    path = str(directory)
    assert shutil.which("bwrap", path=path) is None
    assert shutil.which("setpriv", path=path) is not None
    return path


PRODUCTION_EXIT_TIMEOUT_S = 240


def test_in_production_without_bubblewrap_the_service_refuses_to_start(tmp_path: Path) -> None:
    """``ENVIRONMENT=production`` (PostgreSQL, a real secret) on a host without bubblewrap:
    ``exec-agent serve`` exits non-zero naming the missing layers (before starting Ray, since
    it checks first). Until it has, it is never ready and runs nothing: executions tried
    meanwhile never come back as a run."""
    soak = load_script("soak")
    with postgres_schema() as database_url:
        service = soak.ServeProcess(
            tmp_path,
            slots=1,
            extra_env={
                "ENVIRONMENT": "production",
                "DATABASE_URL": database_url,
                "PATH": path_without_bubblewrap(tmp_path / "bin"),
            },
        )
        key = service.create_key("production")
        ready: list[int] = []
        tried: list[httpx.Response | str] = []

        def try_to_run() -> None:
            try:
                tried.append(post(service.url, key, "print('unsandboxed')")[0])
            except httpx.HTTPError as exc:
                tried.append(type(exc).__name__)

        attempt = threading.Thread(target=try_to_run, daemon=True)
        try:
            process = service.launch()
            deadline = time.monotonic() + PRODUCTION_EXIT_TIMEOUT_S
            with httpx.Client(base_url=service.url, timeout=5) as http:
                while process.poll() is None and time.monotonic() < deadline:
                    with contextlib.suppress(httpx.HTTPError):
                        ready.append(http.get("/health/ready").status_code)
                        if not attempt.is_alive() and not tried:
                            attempt.start()  # once the API answers at all
                    time.sleep(0.5)
            exit_code = process.poll()
            if attempt.ident is not None:  # started: the API answered before the refusal
                attempt.join(timeout=10)
        finally:
            service.stop()
            service.kill_group()
    log = service.log_path.read_text(errors="replace")
    assert exit_code not in (None, 0), log[-3000:]
    assert "required isolation layers unavailable: bubblewrap" in log, log[-3000:]
    assert "serving the API" not in log
    assert 200 not in ready, "it said it was ready"
    for answer in tried:  # no answer, a refusal, or the service's failure: never a run
        if isinstance(answer, httpx.Response) and answer.status_code == 200:
            assert answer.json()["status"] == "internal_error", answer.text


# --- e. scripts/soak.py end to end

SOAK_DURATION_S = 20
SOAK_TIMEOUT_S = 280
SOAK_HTTP_STATUSES = {"200", "202", "400", "401", "404", "413", "415", "422", "429", "503"}
"""Every answer the soak's mix may get: its runs, its bad input, and overload."""
LEFTOVERS = (
    "sandbox_processes_idle",
    "sandbox_processes_after_stop",
    "other_processes_after_stop",
    "cgroups_after_stop",
    "files",
)


def test_a_short_soak_loses_and_leaks_nothing(tmp_path: Path) -> None:
    """``scripts/soak.py --duration-s 20``: its JSON has every part, and says nothing was lost
    (accepted == stored, through the API and in the database) or left behind. Timings are
    reported, never checked."""
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "soak.py"), "--duration-s", str(SOAK_DURATION_S), "--warmup-s", "3",
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=SOAK_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    assert out.exists(), done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(done.stdout) == report
    assert report["failures"] == [], done.stderr[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(report) >= {"config", "service", "requests", "memory", "leftovers", "records"}
    assert report["service"]["embedded"] and report["service"]["exit_code"] == 0
    if os.geteuid() == 0:  # then the slots have cgroups: none after the stop means removed
        assert report["service"]["pool_cgroups_running"] > 0
    run_part = report["requests"]["run"]
    assert run_part["total"] > 0 and run_part["accepted"] > 0
    assert run_part["unexpected_5xx"] == 0 and run_part["wrong_answers"] == 0
    assert set(run_part["by_kind"]) >= {"print", "corpus", "malformed_json", "bad_key"}
    assert {"p50_ms", "p99_ms"} <= set(run_part["latency"])
    assert set(run_part["by_http_status"]) <= SOAK_HTTP_STATUSES
    for where in ("api", "database"):
        records = report["records"][where]
        assert records["accepted"] == records["records"] > 0, records
        assert (records["missing"], records["not_terminal"], records["phantoms"]) == (0, 0, 0)
        assert "internal_error" not in records["by_status"]
    for name in LEFTOVERS:
        assert report["leftovers"][name] == [], name
    memory = report["memory"]
    for moment in ("start", "baseline", "end"):
        assert memory[moment]["rss_bytes"] > 0
        assert memory[moment]["by_role"]["sandboxes"]["processes"] >= SLOTS
    assert isinstance(memory["growth_bytes"], int)
