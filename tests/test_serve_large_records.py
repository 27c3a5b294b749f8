"""``exec-agent serve`` answers records as large as ``MAX_RECORD_BYTES`` allows: the replicas talk
gRPC (Serve's throughput tuning), whose default cap of 4 MiB a message once turned such a record
into ``internal_error`` (executor to API replica) and a page of them into a 500 (proxy to API
replica). The whole command in a subprocess (scripts/serve_process.py), embedded, proxy mode."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.api import auth
from tests.support.scripts import load_script

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

ARTIFACT_BYTES = 6 * 1024 * 1024
"""8 MiB of base64 in the record: twice gRPC's default cap."""
BIG = f"open('out/big.bin', 'wb').write(bytes({ARTIFACT_BYTES}))\nprint('written')"


def test_records_over_grpcs_default_cap_cross_the_replicas(tmp_path: Path) -> None:
    service = load_script("serve_process").ServeProcess(tmp_path, slots=1)
    try:
        service.start()
        key = service.create_key("large")
        with httpx.Client(base_url=service.url, headers=auth(key), timeout=120) as client:
            answer = client.post("/v1/executions", json={"code": BIG, "runtime": "minimal"})
            assert answer.status_code == 200, answer.text[:500]
            record = answer.json()
            assert (record["status"], record["stdout"]) == ("ok", "written\n"), record["status"]
            assert [a["size_bytes"] for a in record["artifacts"]] == [ARTIFACT_BYTES]
            page = client.get("/v1/executions", params={"limit": 10})
            assert page.status_code == 200, page.text[:500]
            assert [item["id"] for item in page.json()["items"]] == [record["id"]]
        assert service.stop() == 0, service.log_tail()
    finally:
        service.stop()
        service.kill_group()
