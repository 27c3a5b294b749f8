"""``scripts/bench burst``: a burst as RL trainers send it. Many connections from one key (its
in-flight cap as high as the connections) for a while, loaded by wrk against ``exec-agent
serve`` (embedded, the service's default executor settings). The goals: no answer other than
200, and no record lost: every execution answered 200 is stored in a terminal status, and no
stored execution of the key is left unfinished once the service settles."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from serve_process import RATE_LIMIT_PER_MINUTE, ServeProcess, positive_int

from executors import TERMINAL_STATUSES, SandboxConfig
from serve_app.settings import Settings

from .common import (
    DEFAULT_CODE,
    MAX_FAILURE_EXAMPLES,
    add_output,
    add_runtime_argument,
    expected_stdout,
    host_info,
    non_negative_int,
    reported_service,
    timestamp,
)
from .http import HTTP_MODES
from .wrk import (
    WRK_ERROR_KINDS,
    WRK_MAX_THREADS,
    WRK_TIMEOUT_S,
    WrkTarget,
    lua_string,
    run_wrk,
    wrk_version,
)

BURST_CONNECTIONS = 128
BURST_DURATION_S = 20
SETTLE_TIMEOUT_S = 90.0
"""How long the stored executions may take to end after wrk stops: a run cut off by wrk's stop
ends within its wall timeout (5 s) plus the handle's margin (60 s)."""
SETTLE_POLL_S = 1.0
PAGE_ITEMS = 100
"""GET /v1/executions's largest page (API.md)."""
TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)
DEFAULT_INGRESS: str = Settings.model_fields["serve_ingress"].default
"""The service's own SERVE_INGRESS default: the burst meets the service as it ships."""

BURST_LUA = r"""
-- Added by scripts/benchlib/burst.py: per thread, the answers by HTTP status and the ids of the
-- executions answered 200; done() writes them, for the run to compare with the stored records.
statuses = {}
ok_ids = {}

local check_response = response
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 and body then
    local id = string.match(body, '"id":"([%w%-]+)"')
    if id then table.insert(ok_ids, id) end
  end
  check_response(status, headers, body)
end

local burst_threads = {}
local base_setup = setup
function setup(thread)
  base_setup(thread)
  table.insert(burst_threads, thread)
end

local base_done = done
function done(summary, latency, requests)
  base_done(summary, latency, requests)
  local counts, ids = {}, {}
  for _, thread in ipairs(burst_threads) do
    for status, count in pairs(thread:get("statuses") or {}) do
      counts[status] = (counts[status] or 0) + count
    end
    for _, id in ipairs(thread:get("ok_ids") or {}) do
      table.insert(ids, '"' .. id .. '"')
    end
  end
  local parts = {}
  for status, count in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local out = assert(io.open(answers_path, "w"))
  out:write('{"statuses":{' .. table.concat(parts, ",") .. '},"ok_ids":['
    .. table.concat(ids, ",") .. ']}\n')
  out:close()
end
"""


@dataclass(frozen=True)
class BurstTarget(WrkTarget):
    """A :class:`WrkTarget` whose script also writes, to ``answers_path``, the answers by HTTP
    status and the ids the 200s carried (wrk's own summary has neither)."""

    answers_path: str = ""

    def lua_script(self) -> str:
        return (
            super().lua_script()
            + f"local answers_path = {lua_string(self.answers_path)}\n"
            + BURST_LUA
        )


def read_answers(path: Path) -> dict[str, Any]:
    """The answers file the script's ``done()`` wrote: statuses (str keys) and 200s' ids."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {
        "statuses": {str(status): int(count) for status, count in raw["statuses"].items()},
        "ok_ids": [str(value) for value in raw["ok_ids"]],
    }


def stored_records(url: str, key: str) -> list[dict[str, Any]]:
    """Every execution of ``key``, through the API (``GET /v1/executions``, page by page)."""
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0
    ) as client:
        while True:
            params: dict[str, str | int] = {"limit": PAGE_ITEMS}
            if cursor is not None:
                params["cursor"] = cursor
            answer = client.get("/v1/executions", params=params)
            answer.raise_for_status()
            page = answer.json()
            records += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return records


def settled_records(url: str, key: str, timeout_s: float) -> tuple[list[dict[str, Any]], float]:
    """The key's records once none is queued or running (or at ``timeout_s``: then some are),
    and the seconds that took."""
    began = time.monotonic()
    while True:
        records = stored_records(url, key)
        waited = time.monotonic() - began
        if all(r["status"] in TERMINAL for r in records) or waited >= timeout_s:
            return records, round(waited, 2)
        time.sleep(SETTLE_POLL_S)


def non_200(wrk: dict[str, Any], statuses: dict[str, int]) -> dict[str, int]:
    """Every request that got no 200, by kind: its HTTP status, or wrk's error (no answer).

    wrk's ``status`` error is a non-2xx answer, already counted by its status here."""
    kinds = {status: count for status, count in statuses.items() if status != "200" and count}
    for kind in WRK_ERROR_KINDS:
        if kind != "status" and wrk["errors"][kind]:
            kinds[kind] = wrk["errors"][kind]
    return kinds


def record_check(
    ok_ids: list[str], records: list[dict[str, Any]], connections: int, unanswered: int
) -> dict[str, Any]:
    """The stored records against the 200s: each 200's execution stored, terminal and ``ok``;
    none left unfinished; the records beyond the 200s at most one per connection (the request
    each had in flight when wrk stopped) plus one per request that got no answer at all."""
    by_id = {r["id"]: r for r in records}
    answered = set(ok_ids)
    missing = sorted(answered - by_id.keys())
    not_ok = sorted(i for i in answered & by_id.keys() if by_id[i]["status"] != "ok")
    non_terminal = sorted(r["id"] for r in records if r["status"] not in TERMINAL)
    beyond = [r for r in records if r["id"] not in answered]
    bound = connections + unanswered
    lost = len(missing) + len(not_ok) + len(non_terminal) + max(0, len(beyond) - bound)
    return {
        "stored": len(records),
        "answered_200": len(ok_ids),
        "duplicate_200_ids": len(ok_ids) - len(answered),
        "statuses": dict(sorted(Counter(r["status"] for r in records).items())),
        "missing": len(missing),
        "not_ok": len(not_ok),
        "non_terminal": len(non_terminal),
        "beyond_200s": len(beyond),
        "beyond_200s_statuses": dict(sorted(Counter(r["status"] for r in beyond).items())),
        "beyond_200s_bound": bound,
        "examples": (missing + not_ok + non_terminal)[:MAX_FAILURE_EXAMPLES],
        "lost": lost,
    }


def burst_failed(result: dict[str, Any]) -> int:
    """What went wrong, counted: each request without a right 200, each record problem, and
    one for a run that could not be made; 0 means both goals are met."""
    if "error" in result:
        return 1 + int(result.get("wrk", {}).get("failed", 0))
    return int(result["wrk"]["failed"]) + int(result["records"]["lost"])


def burst_goal(result: dict[str, Any]) -> dict[str, bool]:
    ran = "error" not in result
    return {
        "no_non_200": ran and not result["answers"]["non_200"] and not result["wrk"]["bad"],
        "no_record_lost": ran and result["records"]["lost"] == 0,
    }


def bench_burst(args: argparse.Namespace) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench burst: wrk not found (scripts/bench and scripts/setup install it)")
    config = SandboxConfig()
    result: dict[str, Any] = {
        "benchmark": "burst",
        "timestamp": timestamp(),
        "host": host_info(config),
        "config": {
            "connections": args.connections,
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "code": args.code,
            "runtime": args.runtime,
            "expect_stdout": expected_stdout(args),
            "key_max_concurrent": args.connections,
            "key_rate_limit_per_minute": RATE_LIMIT_PER_MINUTE,
            "client": f"{wrk_version(wrk)}: {min(args.connections, WRK_MAX_THREADS)} threads, "
            f"keep-alive connections, {WRK_TIMEOUT_S} s timeout",
            "ingress": args.ingress,
            "service": "exec-agent serve: embedded SQLite, in-process limiter, default executor "
            "settings",
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        workdir = Path(tmp)
        service = ServeProcess(workdir, ingress=args.ingress, slots=None, executor_queue=None)
        with reported_service(service, result):
            # One key, allowed as many in flight as there are connections: the burst's premise.
            key = service.create_key("bench-burst", max_concurrent=args.connections)
            # The warm-up's records go to a key of their own: the burst's key holds the burst's.
            warmup_key = service.create_key("bench-burst-warmup", max_concurrent=args.connections)
            result["start_s"] = round(service.start(), 2)
            answers_path = workdir / "answers.json"

            def target(bearer: str) -> BurstTarget:
                return BurstTarget(
                    "POST",
                    "/v1/executions",
                    {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
                    body=json.dumps({"code": args.code, "runtime": args.runtime}),
                    expect_status='"status":"ok"',
                    expect_stdout=expected_stdout(args),
                    answers_path=str(answers_path),
                )

            if args.warmup_s:
                run_wrk(
                    wrk, service.url, target(warmup_key), args.connections, args.warmup_s, workdir
                )
            measured = run_wrk(
                wrk, service.url, target(key), args.connections, args.duration_s, workdir
            )
            result["wrk"] = measured
            answers = read_answers(answers_path)
            result["answers"] = {
                "statuses": dict(sorted(answers["statuses"].items())),
                "non_200": non_200(measured, answers["statuses"]),
            }
            records, settle_s = settled_records(service.url, key, SETTLE_TIMEOUT_S)
            unanswered = sum(measured["errors"][k] for k in WRK_ERROR_KINDS if k != "status")
            result["records"] = record_check(
                answers["ok_ids"], records, args.connections, unanswered
            ) | {"settle_s": settle_s}
    result["goal"] = burst_goal(result)
    result["failed"] = burst_failed(result)
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def summarize_burst(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"burst: {config['connections']} connections from one key (in-flight cap "
        f"{config['key_max_concurrent']}) for {config['duration_s']} s, POST /v1/executions "
        f"{config['code']!r}, wrk, ingress {config['ingress']}"
    ]
    if "error" in result:
        lines.append(f"  ERROR {result['error']}")
    if "wrk" in result:
        m = result["wrk"]
        lat = m["latency_ms"]
        lines.append(
            f"  answers  {m['requests']} in {m['duration_s']:.1f} s, {m['throughput_per_s']}/s; "
            f"latency p50 {_ms(lat['p50'])} ms, p90 {_ms(lat['p90'])}, p99 {_ms(lat['p99'])}, "
            f"max {_ms(lat['max'])}"
        )
    if "answers" in result:
        kinds = result["answers"]["non_200"]
        listed = ", ".join(f"{kind}: {count}" for kind, count in kinds.items()) or "none"
        lines.append(f"  non-200  {listed}; 200 with a wrong body: {bad_200s(result)}")
        for example in result["wrk"]["failure_examples"]:
            lines.append(f"           e.g. {example}")
    if "records" in result:
        r = result["records"]
        lines.append(
            f"  records  {r['stored']} stored for the key; {r['answered_200']} answered 200: "
            f"{r['missing']} missing, {r['not_ok']} not ok; {r['non_terminal']} unfinished "
            f"after {r['settle_s']} s"
        )
        lines.append(
            f"           {r['beyond_200s']} beyond the 200s (in flight when wrk stopped, or "
            f"unanswered; at most {r['beyond_200s_bound']}): {r['beyond_200s_statuses']}"
        )
    goal = result["goal"]
    lines.append(
        f"  goals: no answer other than 200: {_verdict(goal['no_non_200'])}; "
        f"no record lost: {_verdict(goal['no_record_lost'])}"
    )
    return "\n".join(lines)


def bad_200s(result: dict[str, Any]) -> int:
    """200 answers whose body was not the expected record (wrk's bad answers minus non-200s)."""
    statuses: dict[str, int] = result["answers"]["statuses"]
    non_200_answers = sum(count for status, count in statuses.items() if status != "200")
    bad: int = result["wrk"]["bad"]
    return bad - non_200_answers


def add_parser(benchmarks: Any) -> None:
    """``scripts/bench burst``."""
    burst = benchmarks.add_parser(
        "burst",
        help="a burst as RL trainers send it: many connections from one key, with wrk",
        description="Start `exec-agent serve` (embedded, SQLite in a temporary directory, the "
        "default executor settings), create one key allowed as many executions in flight as "
        "there are connections (and a rate limit never reached), and load synchronous POST "
        "/v1/executions from that many wrk connections. Goals: no answer other than 200, and no "
        "record lost (every 200's execution stored and terminal, none left unfinished).",
    )
    burst.add_argument(
        "--connections",
        type=positive_int,
        default=BURST_CONNECTIONS,
        help="wrk connections, and the key's in-flight cap (default: %(default)s)",
    )
    burst.add_argument(
        "--duration-s",
        type=positive_int,
        default=BURST_DURATION_S,
        help="seconds of the burst (default: %(default)s)",
    )
    burst.add_argument(
        "--warmup-s",
        type=non_negative_int,
        default=0,
        help="seconds of an unmeasured wrk run first, from another key; 0: none, the burst "
        "meets a fresh service (default: %(default)s)",
    )
    burst.add_argument(
        "--ingress",
        choices=HTTP_MODES,
        default=DEFAULT_INGRESS,
        help="SERVE_INGRESS of the service (default: the service's own, %(default)s)",
    )
    burst.add_argument("--code", default=DEFAULT_CODE, help="the program (default: %(default)r)")
    add_runtime_argument(burst)
    burst.add_argument("--expect-stdout", default=None, help="as for sandbox")
    add_output(burst, "burst", bench_burst, summarize_burst)
