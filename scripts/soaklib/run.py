"""One soak from start to end: the service started here (or the one given on loopback), the
warm-up, the memory baseline, the measured load, then the checks: records, sandbox leftovers
while idle, and, once a service of ours stopped, what of it survived."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from serve_process import SLOT_UID_BASE, ServeProcess

from .corpus import CorpusEntry, Listeners, load_corpus
from .host import (
    all_processes,
    cgroup_bases,
    is_sandbox,
    left_files,
    memory,
    pool_cgroups,
    process_tree,
    tmp_entries,
    wait_for_strays,
)
from .load import WEIGHTS, Load
from .records import await_background, compare, listed_records, stored_records
from .report import counts, summarize_requests

SETTLE_S = 10.0
"""How long the sandboxes get to settle (idle) before leftovers are counted."""
GONE_TIMEOUT_S = 30.0
"""How long the stopped service's processes get to disappear."""


@dataclass
class Target:
    """The service under load: where it answers, the keys, and what is known of its processes."""

    url: str
    keys: list[str]
    exclusive_keys: bool
    root_pid: int | None
    slot_uids: range
    serve: ServeProcess | None = None
    info: dict[str, Any] = field(default_factory=dict)


def soak(args: argparse.Namespace, warmup_s: float, workdir: Path) -> dict[str, Any]:
    """The whole soak; the report without its verdict (``failures``)."""
    files_before = tmp_entries()
    corpus = load_corpus()
    listeners = Listeners()
    serve: ServeProcess | None = None
    report: dict[str, Any] = {
        "benchmark": "soak",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "duration_s": args.duration_s,
            "warmup_s": warmup_s,
            "workers": args.workers,
            "keys": len(args.key) if args.url else args.keys,
            "slots": args.slots if args.url is None else None,
            "executor_queue": args.executor_queue if args.url is None else None,
            "weights": WEIGHTS,
            "corpus_entries": len(corpus),
            "seed": args.seed,
            "max_rss_growth_mib": args.max_rss_growth_mib,
        },
        "service": {},
        "requests": {},
        "memory": {},
        "leftovers": {},
        "records": {},
    }
    try:
        if args.url is None:
            serve = ServeProcess(workdir, slots=args.slots, executor_queue=args.executor_queue)
            keys = [serve.create_key(f"soak-{n}") for n in range(args.keys)]
            try:
                start_s = serve.start()
            except RuntimeError as exc:
                report["service"] = {"url": serve.url, "embedded": True, "error": str(exc)}
                return report
            if serve.process is None:
                raise RuntimeError("exec-agent serve was not started")
            target = Target(serve.url, keys, True, serve.process.pid, serve.slot_uids, serve)
            report["service"] = {"url": serve.url, "embedded": True, "start_s": round(start_s, 1)}
        else:
            target = Target(
                args.url,
                list(args.key),
                False,
                args.service_pid,
                range(SLOT_UID_BASE, SLOT_UID_BASE + 1000),
            )
            report["service"] = {"url": args.url, "embedded": False, "pid": args.service_pid}
        try:
            run_load(args, warmup_s, target, corpus, listeners, report)
        except (httpx.HTTPError, ValueError, KeyError) as exc:  # the service stopped answering
            report["error"] = f"the load could not finish: {type(exc).__name__}: {exc}"
        if serve is not None:
            stop_and_check(serve, target, files_before, report)
    finally:
        listeners.close()
        if serve is not None:
            serve.stop()
            serve.kill_group()
            if report["service"].get("exit_code") != 0:
                report["service"]["log_tail"] = serve.log_tail(15).splitlines()
    return report


def run_load(
    args: argparse.Namespace,
    warmup_s: float,
    target: Target,
    corpus: list[CorpusEntry],
    listeners: Listeners,
    report: dict[str, Any],
) -> None:
    secrets_to_hide = [target.serve.secret] if target.serve else []
    load = Load(
        target.url,
        target.keys,
        corpus,
        listeners,
        max_body_bytes=args.max_body_bytes,
        secrets_to_hide=secrets_to_hide,
    )
    mem: dict[str, Any] = report["memory"]
    seen: set[tuple[int, int]] = set()
    root = target.root_pid

    def measure() -> dict[str, Any] | None:
        if root is None:
            return None
        tree = process_tree(root)
        seen.update(p.key for p in tree)
        target.info.setdefault("pids", set()).update(p.pid for p in tree)
        return memory(tree, target.slot_uids)

    mem["start"] = measure()
    if warmup_s > 0:
        load.run_phase("warmup", warmup_s, args.workers, args.seed)
    if root is not None:
        wait_for_strays(root, target.slot_uids, SETTLE_S)
    mem["baseline"] = measure()
    load.run_phase("run", args.duration_s, args.workers, args.seed + 1)
    outcomes = load.outcomes
    background = await_background(target.url, target.keys, outcomes)
    report["requests"] = {
        "warmup": summarize_requests([o for o in outcomes if o.phase == "warmup"]),
        "run": summarize_requests([o for o in outcomes if o.phase == "run"]),
        "background_final_status": counts(background.values()),
    }
    accepted = {o.accepted_id for o in outcomes if o.accepted_id is not None}
    report["records"]["api"] = compare(
        accepted, listed_records(target.url, target.keys), exclusive=target.exclusive_keys
    )
    target.info["accepted"] = accepted
    if root is not None:
        strays = wait_for_strays(root, target.slot_uids, SETTLE_S)
        report["leftovers"]["sandbox_processes_idle"] = [p.describe() for p in strays]
        mem["end"] = measure()
        if mem["baseline"] and mem["end"]:
            mem["growth_bytes"] = (
                mem["end"]["counted_rss_bytes"] - mem["baseline"]["counted_rss_bytes"]
            )
        target.info["seen"] = seen
        target.info["cgroup_bases"] = bases = cgroup_bases(root)
        # What the after-stop check looks for, seen while it must exist (none when not root).
        report["service"]["pool_cgroups_running"] = len(pool_cgroups(bases, target.info["pids"]))
    else:
        report["leftovers"]["sandbox_processes_idle"] = None
        mem["note"] = "no --service-pid: the service's processes are unknown"


def stop_and_check(
    serve: ServeProcess, target: Target, files_before: dict[str, set[str]], report: dict[str, Any]
) -> None:
    """Stop the service (SIGTERM: a drain) and look at what it left: processes, cgroups,
    files, and the records in its database."""
    seen: set[tuple[int, int]] = target.info.get("seen", set())
    pids: set[int] = target.info.get("pids", set())
    bases: list[Path] = target.info.get("cgroup_bases", [])
    began = time.monotonic()
    exit_code = serve.stop()
    report["service"].update(
        {
            "exit_code": exit_code,
            "killed": exit_code is None,
            "stop_s": round(time.monotonic() - began, 1),
        }
    )
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while True:
        survivors = [p for p in all_processes() if p.key in seen]
        if not survivors or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    sandbox = [p for p in survivors if is_sandbox(p, target.slot_uids)]
    report["leftovers"]["sandbox_processes_after_stop"] = [p.describe() for p in sandbox]
    report["leftovers"]["other_processes_after_stop"] = [
        p.describe() for p in survivors if p not in sandbox
    ]
    report["leftovers"]["cgroups_after_stop"] = pool_cgroups(bases, pids)
    report["leftovers"]["files"] = left_files(files_before, target.slot_uids)
    for process in survivors:  # leave nothing behind ourselves
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    serve.kill_group()
    report["records"]["database"] = compare(
        target.info.get("accepted", set()), stored_records(serve.database_path), exclusive=True
    )
