"""Soak test of the Python Execution Agent: ``scripts/soak [options]``.

Loads one service, on loopback only, for a bounded time (``--duration-s``, default 300) and then
checks that nothing was lost or leaked. The service is ``exec-agent serve`` started here
(embedded: SQLite in a temporary directory, a Ray of its own on free loopback ports, one
executor replica of ``--slots`` slots, ``--executor-queue`` waiting) or, with ``--url`` and one
``--key`` or more, one already running on 127.0.0.1 or ::1 (any other host is refused).

The load: ``--workers`` threads, each sending one request after another, spread over the keys
(``--keys`` of them when the service is ours), drawn from a fixed mix:

    ordinary programs   print, a small computation, stdin echoed, code judged by test_code
                        (passing and failing), a background run (``wait: false``)
    adversarial corpus  tests/data/security_corpus.json (its non-HTTP entries), each expected to
                        end in the statuses its ``expect`` names (``status=...``; the API's table
                        wins where the corpus and the API disagree, as in the tests), never
                        ``internal_error``, never with a breach marker (CONNECTED, OPEN, ...)
    bad HTTP input      malformed JSON, a body over MAX_BODY_BYTES, a wrong media type, unknown
                        fields, missing or unknown keys, an unknown id; and listing
A warm-up (``--warmup-s``) comes first; its figures are kept apart from the run's.

Reported (``--out``, default bench-results/soak.json; the same JSON on stdout, a summary on
stderr): requests by kind, HTTP status, error code and execution status; latency p50/p99 (all
requests, and per kind); the service's memory: the RSS of the serve process tree (the
``exec-agent serve`` driver, Ray's daemons, the Ray workers holding the replicas, Serve's
controller and proxy, and the sandboxes), at start, after the warm-up (the baseline) and at the
end, idle each time; the tree's sandbox processes left at the end beyond each slot's zygote and
spare; after the service stopped (when it is ours), whatever of its process tree survived, the
job cgroups and temporary files its sandboxes left, and its exit status; and records against
answers: every execution accepted (200 or 202) must end with one terminal record (read through
the API, and from the SQLite database once the service stopped), and no record may exist that
was not accepted.

Exit status: 1 on any loss (an accepted execution without a terminal record, or a record
nobody was told of), leak (a sandbox process or cgroup left behind, RSS grown by more than
``--max-rss-growth-mib`` from the baseline), unexpected 5xx (503 ``overloaded`` is expected
under load, a 500 never), ``internal_error`` record, or wrong answer; 0 otherwise; 2 on bad
arguments. The results are written either way.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import re
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

SCRIPTS_DIR = str(Path(__file__).resolve().parent)
if SCRIPTS_DIR not in sys.path:  # loaded by path (as the tests do), not run as a script
    sys.path.insert(0, SCRIPTS_DIR)
from serve_process import SLOT_UID_BASE, ServeProcess, percentile, positive_int  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_PATH = REPO_ROOT / "tests" / "data" / "security_corpus.json"
DEFAULT_OUT = REPO_ROOT / "bench-results" / "soak.json"
MIB = 1024 * 1024

OVERFLOW_UID = 65534
ZYGOTE_SCRIPT = "zygote.py"
SPARE_MAX_PROCESSES = 2
"""Between jobs a slot keeps one spare job sandbox ready: its init and its program process."""
DEFAULT_MAX_BODY_BYTES = 2 * MIB
CLIENT_TIMEOUT_S = 120.0
SETTLE_S = 10.0
"""How long the sandboxes get to settle (idle) before leftovers are counted."""
GONE_TIMEOUT_S = 30.0
"""How long the stopped service's processes get to disappear."""
BACKGROUND_TIMEOUT_S = 180.0
"""How long the background runs get to finish after the load stopped."""
MAX_EXAMPLES = 10
MAX_BACK_OFF_S = 5.0
"""A worker refused with ``Retry-After`` waits that long, at most this."""
TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 - looked at for leftovers, never written
CGROUP_ROOT = Path("/sys/fs/cgroup")
POOL_GROUP = re.compile(r"exec-agent-(\d+)-[0-9a-f]{8}")
"""A sandbox pool's cgroup (executors/_pool.py): ``exec-agent-<replica pid>-<random>``."""
BREACH = re.compile(r"(?m)^(CONNECTED|OPEN |ATTACHED|PWNED-next-run)|EXISTS-from-previous-run")
"""Markers corpus programs print only if they got through the sandbox."""

STATUSES = {
    "ok",
    "nonzero_exit",
    "crashed",
    "timeout",
    "memory_limit",
    "output_limit",
    "internal_error",
}
TERMINAL = STATUSES
CORPUS_WORDS = {"runtime_error": "crashed"}
"""The corpus' status words that the API names otherwise (tests/data/security_corpus.README)."""
API_WINS = {"huge_exception_message": {"output_limit"}}
"""Where the API's status table overrides the corpus (tests/test_security_corpus.py says why)."""
STATUS_WORDS = re.compile(
    r"(?<!never )status=([a-z_]+)((?:\s*(?:/|\bor\b)\s*[a-z_]+)*)", re.IGNORECASE
)

WEIGHTS: dict[str, int] = {
    "print": 18,
    "compute": 8,
    "stdin_echo": 8,
    "judged_pass": 6,
    "judged_fail": 3,
    "background": 10,
    "corpus": 16,
    "malformed_json": 4,
    "oversized_body": 1,
    "wrong_media_type": 4,
    "unknown_field": 4,
    "bad_key": 4,
    "missing_key": 2,
    "unknown_id": 3,
    "list": 3,
}


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    uid: int
    state: str
    cmdline: str
    start_ticks: int
    pid_namespace: str
    rss_bytes: int
    anon_bytes: int

    @property
    def key(self) -> tuple[int, int]:
        """The pid with its start time: one process, even if the pid is reused later."""
        return self.pid, self.start_ticks

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "uid": self.uid, "cmdline": self.cmdline[:160]}


def _read_proc(pid: int) -> Proc | None:
    base = Path("/proc", str(pid))
    try:
        stat = (base / "stat").read_text()
        status = (base / "status").read_text()
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        namespace = os.readlink(base / "ns" / "pid")
    except OSError:  # gone meanwhile, or a kernel thread
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    values: dict[str, str] = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        values[name] = rest.strip()

    def kib(name: str) -> int:
        return int(values.get(name, "0 kB").split()[0]) * 1024

    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        uid=int(values["Uid"].split()[1]),
        state=fields[0],
        cmdline=cmdline.strip(),
        start_ticks=int(fields[19]),
        pid_namespace=namespace,
        rss_bytes=kib("VmRSS"),
        anon_bytes=kib("RssAnon"),
    )


def all_processes() -> list[Proc]:
    found = (_read_proc(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return [p for p in found if p is not None and p.state != "Z"]


def process_tree(root: int, processes: list[Proc] | None = None) -> list[Proc]:
    """``root`` and every process below it, by parent links."""
    processes = all_processes() if processes is None else processes
    children: dict[int, list[Proc]] = {}
    top: list[Proc] = []
    for process in processes:
        children.setdefault(process.ppid, []).append(process)
        if process.pid == root:
            top.append(process)
    found: list[Proc] = []
    todo = top
    while todo:
        process = todo.pop()
        found.append(process)
        todo.extend(children.get(process.pid, []))
    return found


def is_sandbox(process: Proc, slot_uids: range) -> bool:
    """A slot's process: its uid (or the overflow uid a job's user namespace shows for unmapped
    ones), or the zygote's command line (bubblewrap and its shell, as root)."""
    return (
        process.uid in slot_uids or process.uid == OVERFLOW_UID or ZYGOTE_SCRIPT in process.cmdline
    )


def memory(tree: list[Proc], slot_uids: range) -> dict[str, Any]:
    """The tree's RSS (and private, anonymous part), split by role.

    ``idle_ray_workers`` are Ray's pooled workers (``ray::IDLE``): Ray starts and ends them by
    itself, so the growth that counts leaves them out.
    """
    groups: dict[str, list[Proc]] = {
        "sandboxes": [],
        "ray_workers": [],
        "idle_ray_workers": [],
        "other": [],
    }
    for process in tree:
        if is_sandbox(process, slot_uids):
            groups["sandboxes"].append(process)
        elif process.cmdline.startswith("ray::IDLE"):
            groups["idle_ray_workers"].append(process)
        elif process.cmdline.startswith("ray::"):
            groups["ray_workers"].append(process)
        else:
            groups["other"].append(process)
    total = sum(p.rss_bytes for p in tree)
    idle = sum(p.rss_bytes for p in groups["idle_ray_workers"])
    workers: Counter[str] = Counter()
    for process in groups["ray_workers"]:
        workers[process.cmdline.split()[0]] += process.rss_bytes
    return {
        "processes": len(tree),
        "rss_bytes": total,
        "anon_bytes": sum(p.anon_bytes for p in tree),
        "counted_rss_bytes": total - idle,
        "by_role": {
            role: {"processes": len(members), "rss_bytes": sum(p.rss_bytes for p in members)}
            for role, members in groups.items()
        },
        "ray_workers_rss_bytes": dict(sorted(workers.items())),
    }


def sandbox_strays(tree: list[Proc], slot_uids: range) -> list[Proc]:
    """Sandbox processes that are neither a slot's zygote nor its waiting spare.

    A zygote is the script's process (a slot's uid) whose parent is not a slot's process
    (bubblewrap's init, or without bubblewrap the replica); a spare is at most
    ``SPARE_MAX_PROCESSES`` forks of its zygote, with its command line, in one PID namespace of
    their own. Anything else of a slot's uid (or the overflow uid) is a stray.
    """
    by_pid = {p.pid: p for p in tree}
    jobs = [p for p in tree if p.uid in slot_uids or p.uid == OVERFLOW_UID]
    zygotes = [
        p
        for p in jobs
        if ZYGOTE_SCRIPT in p.cmdline and p.ppid in by_pid and by_pid[p.ppid].uid not in slot_uids
    ]
    strays: list[Proc] = []
    explained = {z.pid for z in zygotes}
    for zygote in zygotes:
        below = [p for p in process_tree(zygote.pid, tree) if p.pid != zygote.pid]
        namespaces = {p.pid_namespace for p in below}
        spare_like = (
            len(below) <= SPARE_MAX_PROCESSES
            and len(namespaces) <= 1
            and zygote.pid_namespace not in namespaces
            and all(p.cmdline == zygote.cmdline for p in below)
        )
        explained |= {p.pid for p in below}
        if not spare_like:
            strays += below
    strays += [p for p in jobs if p.pid not in explained]
    return strays


def wait_for_strays(root: int, slot_uids: range, timeout_s: float) -> list[Proc]:
    """The sandbox strays once they are gone, or those still there after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        strays = sandbox_strays(process_tree(root), slot_uids)
        if not strays or time.monotonic() > deadline:
            return strays
        time.sleep(0.25)


def cgroup_bases(pid: int) -> list[Path]:
    """The cgroup directories ``pid`` is in, one per hierarchy (v1) or the one (v2)."""
    bases = []
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            names = controllers.split(",") if controllers else [""]
            for name in names:
                if name.startswith("name="):
                    continue
                base = (
                    CGROUP_ROOT / name / path.lstrip("/")
                    if name
                    else CGROUP_ROOT / path.lstrip("/")
                )
                if base.is_dir():
                    bases.append(base)
    return bases


def pool_cgroups(bases: list[Path], pids: set[int]) -> list[str]:
    """The sandbox pools' cgroups under ``bases`` made by one of ``pids``."""
    found = []
    for base in bases:
        with contextlib.suppress(OSError):
            for entry in base.iterdir():
                match = POOL_GROUP.fullmatch(entry.name)
                if match and int(match.group(1)) in pids and entry.is_dir():
                    found.append(str(entry))
    return sorted(found)


def tmp_entries() -> dict[str, set[str]]:
    entries: dict[str, set[str]] = {}
    for directory in TMP_DIRS:
        with contextlib.suppress(OSError):
            entries[directory] = set(os.listdir(directory))
    return entries


def left_files(before: dict[str, set[str]], slot_uids: range) -> list[str]:
    """New entries of the host's temporary directories that a sandbox (its uid) or the engine
    (its name) made; other processes of the host create theirs meanwhile, which do not count."""
    left = []
    for directory, names in tmp_entries().items():
        for name in sorted(names - before.get(directory, set())):
            path = Path(directory, name)
            try:
                owner = path.lstat().st_uid
            except OSError:
                continue
            if owner in slot_uids or owner == OVERFLOW_UID or name.startswith("exec-agent"):
                left.append(str(path))
    return left


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class CorpusEntry:
    name: str
    code: str
    statuses: frozenset[str] | None
    """The statuses its ``expect`` names (None: it names none; any but internal_error)."""


def expected_statuses(name: str, expect: str) -> frozenset[str] | None:
    """The API statuses an entry's ``expect`` text names (``status=a or b``, ``status=a/b``)."""
    if name in API_WINS:
        return frozenset(API_WINS[name])
    found: set[str] = set()
    for first, rest in STATUS_WORDS.findall(expect):
        words = [first, *re.findall(r"[a-z_]+", rest.replace(" or ", " "))]
        for word in words:
            word = CORPUS_WORDS.get(word.lower(), word.lower())
            if word in STATUSES and word != "internal_error":
                found.add(word)
    return frozenset(found) or None


def load_corpus(path: Path = CORPUS_PATH) -> list[CorpusEntry]:
    """The corpus' programs (its ``http`` entries are client scripts, not programs)."""
    entries = json.loads(path.read_text(encoding="utf-8"))
    return [
        CorpusEntry(e["name"], e["code"], expected_statuses(e["name"], e["expect"]))
        for e in entries
        if e["category"] != "http"
    ]


class Listeners:
    """The loopback listeners the corpus' network probes aim at (HOST_PORT, HOST_PORT6,
    HOST_UDP_PORT): reachable only from the host, which is the point."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self.ports: dict[str, int] = {}
        self.ports["HOST_PORT"] = self._open(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1")
        with contextlib.suppress(OSError):
            self.ports["HOST_PORT6"] = self._open(socket.AF_INET6, socket.SOCK_STREAM, "::1")
        self.ports["HOST_UDP_PORT"] = self._open(socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1")

    def _open(self, family: int, kind: int, host: str) -> int:
        sock = socket.socket(family, kind)
        sock.bind((host, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        self._sockets.append(sock)
        port: int = sock.getsockname()[1]
        return port

    def fill(self, code: str) -> str:
        # HOST_PORT6 first: it holds HOST_PORT.
        for name in sorted(self.ports, key=len, reverse=True):
            code = code.replace(name, str(self.ports[name]))
        return code

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


# --------------------------------------------------------------------------- the load


@dataclass
class Outcome:
    kind: str
    phase: str
    latency_s: float
    http_status: int | None
    """None: no answer at all (a transport error)."""
    error_code: str | None = None
    exec_status: str | None = None
    accepted_id: str | None = None
    key_index: int | None = None
    detail: str | None = None
    """The corpus entry, for corpus runs."""
    problem: str | None = None
    """Why this answer is wrong; None when it is one the kind allows."""
    retry_after_s: float = 0.0
    """A refusal's ``Retry-After``: the worker waits that long, as a good client does."""

    @property
    def unexpected_5xx(self) -> bool:
        if self.http_status is None or not 500 <= self.http_status < 600:
            return False
        return not (self.http_status == 503 and self.error_code == "overloaded")


Expectation = Callable[[dict[str, Any]], str | None]
"""A check of a finished record: None when right, else what is wrong."""


def expect_output(stdout: str, *, passed: bool | None = None, status: str = "ok") -> Expectation:
    def check(record: dict[str, Any]) -> str | None:
        if record.get("status") != status:
            return f"status {record.get('status')}, expected {status}"
        if passed is not None and record.get("passed") is not passed:
            return f"passed {record.get('passed')}, expected {passed}"
        if status == "ok" and record.get("stdout") != stdout:
            return f"stdout {record.get('stdout')!r:.80}, expected {stdout!r:.80}"
        return None

    return check


def expect_corpus(entry: CorpusEntry) -> Expectation:
    def check(record: dict[str, Any]) -> str | None:
        status = record.get("status")
        if status == "internal_error":
            return "internal_error from what a program did"
        if entry.statuses is not None and status not in entry.statuses:
            return f"status {status}, expected one of {sorted(entry.statuses)}"
        if BREACH.search(str(record.get("stdout", ""))):
            return "a breach marker in its output"
        return None

    return check


class Load:
    """The request mix; one instance shared by the worker threads (each has its own client)."""

    def __init__(
        self,
        url: str,
        keys: list[str],
        corpus: list[CorpusEntry],
        listeners: Listeners,
        *,
        max_body_bytes: int,
        secrets_to_hide: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.keys = keys
        self.corpus = corpus
        self.listeners = listeners
        self.max_body_bytes = max_body_bytes
        self.secrets_to_hide = [s for s in secrets_to_hide if s]
        self.kinds = list(WEIGHTS)
        self.weights = [WEIGHTS[k] for k in self.kinds]
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()

    def run_phase(self, phase: str, duration_s: float, workers: int, seed: int) -> None:
        deadline = time.monotonic() + duration_s
        threads = [
            threading.Thread(
                target=self._worker,
                args=(phase, deadline, random.Random(seed * 1000 + n)),  # noqa: S311 - a load mix, not a secret
                name=f"soak-{phase}-{n}",
                daemon=True,
            )
            for n in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _worker(self, phase: str, deadline: float, rng: random.Random) -> None:
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S) as client:
            while time.monotonic() < deadline:
                kind = rng.choices(self.kinds, self.weights)[0]
                key_index = rng.randrange(len(self.keys))
                began = time.monotonic()
                try:
                    outcome = self._one(client, kind, key_index, rng)
                except httpx.HTTPError as exc:
                    outcome = Outcome(
                        kind, phase, 0.0, None, problem=f"no answer: {type(exc).__name__}"
                    )
                outcome.phase = phase
                outcome.latency_s = time.monotonic() - began
                with self.lock:
                    self.outcomes.append(outcome)
                if outcome.retry_after_s:  # back off as asked (not counted as latency)
                    time.sleep(
                        max(
                            0.0,
                            min(outcome.retry_after_s, MAX_BACK_OFF_S, deadline - time.monotonic()),
                        )
                    )

    # --- one request of each kind

    def _headers(self, key_index: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key_index]}"}

    def _one(self, client: httpx.Client, kind: str, key: int, rng: random.Random) -> Outcome:
        n = rng.randrange(1_000_000)
        if kind == "print":
            return self._run(client, kind, key, {"code": f"print({n})"}, expect_output(f"{n}\n"))
        if kind == "compute":
            code = f"print(sum(i * i for i in range({n % 100_000})))"
            total = sum(i * i for i in range(n % 100_000))
            return self._run(client, kind, key, {"code": code}, expect_output(f"{total}\n"))
        if kind == "stdin_echo":
            text = f"line {n}\nsecond line ü\n"
            body = {"code": "import sys\nprint(sys.stdin.read()[::-1], end='')", "stdin": text}
            return self._run(client, kind, key, body, expect_output(text[::-1]))
        if kind in ("judged_pass", "judged_fail"):
            wrong = kind == "judged_fail"
            body = {
                "code": "def add(a, b):\n    return a + b\n",
                "test_code": f"assert add({n}, 1) == {n + (2 if wrong else 1)}\n",
            }
            status = "nonzero_exit" if wrong else "ok"
            return self._run(
                client, kind, key, body, expect_output("", passed=not wrong, status=status)
            )
        if kind == "background":
            return self._run(client, kind, key, {"code": f"print({n})", "wait": False}, None)
        if kind == "corpus":
            entry = rng.choice(self.corpus)
            body = {"code": self.listeners.fill(entry.code)}
            outcome = self._run(client, kind, key, body, expect_corpus(entry))
            outcome.detail = entry.name
            return outcome
        return self._refused(client, kind, key, rng)

    def _refused(self, client: httpx.Client, kind: str, key: int, rng: random.Random) -> Outcome:
        """Bad input (and reads): each has exactly one right answer."""
        json_type = {"Content-Type": "application/json"}
        if kind == "malformed_json":
            response = client.post(
                "/v1/executions",
                content=b'{"code": "print(1)"',
                headers=self._headers(key) | json_type,
            )
            return self._answer(kind, key, response, 400, "invalid_json")
        if kind == "oversized_body":
            body = b'{"code": "' + b"#" * (self.max_body_bytes + 1) + b'"}'
            response = client.post(
                "/v1/executions", content=body, headers=self._headers(key) | json_type
            )
            return self._answer(kind, key, response, 413, "payload_too_large")
        if kind == "wrong_media_type":
            response = client.post(
                "/v1/executions",
                content=b'{"code": "print(1)"}',
                headers=self._headers(key) | {"Content-Type": "text/plain"},
            )
            return self._answer(kind, key, response, 415, "unsupported_media_type")
        if kind == "unknown_field":
            response = client.post(
                "/v1/executions",
                json={"code": "print(1)", "no_such_field": True},
                headers=self._headers(key),
            )
            return self._answer(kind, key, response, 422, "invalid_request")
        if kind == "bad_key":
            bogus = secrets.token_urlsafe(rng.choice((8, 32, 43)))
            response = client.post(
                "/v1/executions",
                json={"code": "print(1)"},
                headers={"Authorization": f"Bearer {bogus}"},
            )
            return self._refused_key(kind, key, response)
        if kind == "missing_key":
            response = client.post("/v1/executions", json={"code": "print(1)"})
            return self._refused_key(kind, key, response)
        if kind == "unknown_id":
            response = client.get(f"/v1/executions/{uuid.uuid4()}", headers=self._headers(key))
            return self._answer(kind, key, response, 404, "not_found")
        if kind == "list":
            response = client.get("/v1/executions?limit=5", headers=self._headers(key))
            return self._answer(kind, key, response, 200, None)
        raise ValueError(f"unknown kind {kind}")

    def _refused_key(self, kind: str, key: int, response: httpx.Response) -> Outcome:
        """401, or 429 once this address failed too often (the service's auth throttle)."""
        if response.status_code == 429:
            outcome = self._answer(kind, key, response, 429, "rate_limited")
            if not outcome.problem and float(response.headers.get("retry-after", "0")) < 1:
                outcome.problem = "429 without Retry-After"
            return outcome
        return self._answer(kind, key, response, 401, "unauthorized")

    def _answer(
        self, kind: str, key: int, response: httpx.Response, status: int, code: str | None
    ) -> Outcome:
        outcome = Outcome(kind, "", 0.0, response.status_code, key_index=key)
        outcome.error_code = _error_code(response)
        if (response.status_code, outcome.error_code) != (status, code):
            outcome.problem = (
                f"HTTP {response.status_code} {outcome.error_code}, expected {status} {code}"
            )
        self._hide_check(outcome, response)
        return outcome

    def _run(
        self,
        client: httpx.Client,
        kind: str,
        key: int,
        body: dict[str, Any],
        expect: Expectation | None,
    ) -> Outcome:
        response = client.post("/v1/executions", json=body, headers=self._headers(key))
        outcome = Outcome(kind, "", 0.0, response.status_code, key_index=key)
        outcome.error_code = _error_code(response)
        wanted = 202 if body.get("wait") is False else 200
        if response.status_code == wanted:
            record = response.json()
            outcome.accepted_id = record.get("id")
            outcome.exec_status = record.get("status")
            if expect is not None:
                outcome.problem = expect(record)
        elif response.status_code in (429, 503) and outcome.error_code in (
            "rate_limited",
            "overloaded",
        ):
            outcome.retry_after_s = float(response.headers.get("retry-after", "0"))
            if outcome.retry_after_s < 1:
                outcome.problem = f"{response.status_code} without Retry-After"
        else:
            outcome.problem = f"HTTP {response.status_code} {outcome.error_code}, expected {wanted}"
        self._hide_check(outcome, response)
        return outcome

    def _hide_check(self, outcome: Outcome, response: httpx.Response) -> None:
        if any(secret in response.text for secret in self.secrets_to_hide):
            outcome.problem = "a service secret in the answer"


def _error_code(response: httpx.Response) -> str | None:
    if response.status_code < 400:
        return None
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "<not an error body>"
    return str(code)


# --------------------------------------------------------------------------- records


def await_background(url: str, keys: list[str], outcomes: list[Outcome]) -> dict[str, str]:
    """Wait (bounded) for every accepted background run; id -> its last status seen."""
    pending = {
        o.accepted_id: o.key_index
        for o in outcomes
        if o.kind == "background" and o.accepted_id is not None and o.key_index is not None
    }
    seen: dict[str, str] = {}
    deadline = time.monotonic() + BACKGROUND_TIMEOUT_S
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        for execution_id, key_index in pending.items():
            while True:
                wait_s = max(0.0, min(30.0, deadline - time.monotonic()))
                try:
                    response = client.get(
                        f"/v1/executions/{execution_id}",
                        params={"wait_s": round(wait_s, 1)},
                        headers={"Authorization": f"Bearer {keys[key_index]}"},
                    )
                    status = response.json().get("status") if response.status_code == 200 else None
                except (httpx.HTTPError, ValueError) as exc:
                    seen[execution_id] = f"no answer: {type(exc).__name__}"
                    break
                seen[execution_id] = str(status) if status else f"HTTP {response.status_code}"
                if status in TERMINAL or wait_s <= 0:
                    break
    return seen


def listed_records(url: str, keys: list[str]) -> dict[str, str]:
    """Every execution each key has, through the list endpoint: id -> status."""
    records: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        for key in keys:
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"limit": 100}
                if cursor:
                    params["cursor"] = cursor
                response = client.get(
                    "/v1/executions", params=params, headers={"Authorization": f"Bearer {key}"}
                )
                response.raise_for_status()
                page = response.json()
                records.update({item["id"]: item["status"] for item in page["items"]})
                cursor = page["next_cursor"]
                if not cursor:
                    break
    return records


def stored_records(database_path: Path) -> dict[str, str]:
    """Every execution in the stopped service's SQLite database: id -> status."""
    from sqlalchemy import create_engine, select

    from serve_app.db.models import Execution

    engine = create_engine(f"sqlite:///{database_path}")
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Execution.id, Execution.status)).all()
    finally:
        engine.dispose()
    return {str(row.id): str(row.status) for row in rows}


def compare(accepted: set[str], records: dict[str, str], *, exclusive: bool) -> dict[str, Any]:
    """Accepted executions against stored records: missing and non-terminal ones are lost;
    with ``exclusive`` keys (ours alone), records nobody accepted are phantoms."""
    missing = sorted(accepted - set(records))
    unfinished = sorted(i for i in accepted & set(records) if records[i] not in TERMINAL)
    phantoms = sorted(set(records) - accepted) if exclusive else []
    return {
        "accepted": len(accepted),
        "records": len(records),
        "missing": len(missing),
        "not_terminal": len(unfinished),
        "phantoms": len(phantoms) if exclusive else None,
        "examples": {
            "missing": missing[:MAX_EXAMPLES],
            "not_terminal": unfinished[:MAX_EXAMPLES],
            "phantoms": phantoms[:MAX_EXAMPLES],
        },
        "by_status": dict(Counter(records[i] for i in accepted & set(records))),
    }


# --------------------------------------------------------------------------- reporting


def latency(outcomes: list[Outcome]) -> dict[str, Any]:
    ms = [o.latency_s * 1000 for o in outcomes]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {
        "count": len(ms),
        "p50_ms": rounded(percentile(ms, 50) if ms else None),
        "p99_ms": rounded(percentile(ms, 99) if ms else None),
        "max_ms": rounded(max(ms) if ms else None),
    }


def summarize_requests(outcomes: list[Outcome]) -> dict[str, Any]:
    kinds = sorted({o.kind for o in outcomes})
    problems = [o for o in outcomes if o.problem]
    return {
        "total": len(outcomes),
        "by_http_status": _counts(
            str(o.http_status) if o.http_status else "no answer" for o in outcomes
        ),
        "by_error_code": _counts(o.error_code for o in outcomes if o.error_code),
        # Of the answered runs (``wait: true``); background runs end later (see the report's
        # ``background_final_status``).
        "by_execution_status": _counts(
            o.exec_status for o in outcomes if o.exec_status and o.kind != "background"
        ),
        "by_kind": {
            kind: {
                **latency([o for o in outcomes if o.kind == kind]),
                "by_http_status": _counts(
                    str(o.http_status) if o.http_status else "no answer"
                    for o in outcomes
                    if o.kind == kind
                ),
            }
            for kind in kinds
        },
        "corpus_entries": _counts(o.detail for o in outcomes if o.kind == "corpus"),
        "latency": latency(outcomes),
        "accepted": sum(o.accepted_id is not None for o in outcomes),
        "refused_overloaded": sum(o.error_code == "overloaded" for o in outcomes),
        "unexpected_5xx": sum(o.unexpected_5xx for o in outcomes),
        "wrong_answers": len(problems),
        "wrong_answer_examples": [
            {"kind": o.kind, "detail": o.detail, "http_status": o.http_status, "problem": o.problem}
            for o in problems[:MAX_EXAMPLES]
        ],
    }


def _counts(values: Iterable[str | None]) -> dict[str, int]:
    return dict(sorted(Counter(v for v in values if v is not None).items()))


def verdict(report: dict[str, Any], max_rss_growth_bytes: int) -> list[str]:
    """Why the soak failed (empty: it passed)."""
    failures = []
    if report.get("error"):
        failures.append(report["error"])
    for name, part in (
        ("warm-up", report["requests"].get("warmup")),
        ("run", report["requests"].get("run")),
    ):
        if not part:
            continue
        if part["unexpected_5xx"]:
            failures.append(f"{name}: {part['unexpected_5xx']} unexpected 5xx answers")
        if part["wrong_answers"]:
            failures.append(f"{name}: {part['wrong_answers']} wrong answers")
    for where in ("api", "database"):
        check = report["records"].get(where)
        if not check:
            continue
        if check["missing"] or check["not_terminal"]:
            failures.append(
                f"records ({where}): {check['missing']} accepted executions missing, "
                f"{check['not_terminal']} not terminal"
            )
        if check["phantoms"]:
            failures.append(f"records ({where}): {check['phantoms']} records nobody accepted")
        if check["by_status"].get("internal_error"):
            failures.append(
                f"records ({where}): {check['by_status']['internal_error']} internal_error"
            )
    leftovers = report["leftovers"]
    if leftovers.get("sandbox_processes_idle"):
        failures.append(f"{len(leftovers['sandbox_processes_idle'])} sandbox processes left (idle)")
    if leftovers.get("sandbox_processes_after_stop"):
        failures.append(
            f"{len(leftovers['sandbox_processes_after_stop'])} sandbox processes left after stop"
        )
    if leftovers.get("cgroups_after_stop"):
        failures.append(f"{len(leftovers['cgroups_after_stop'])} sandbox cgroups left after stop")
    if leftovers.get("files"):
        failures.append(f"{len(leftovers['files'])} temporary files left by sandboxes")
    growth = report["memory"].get("growth_bytes")
    if growth is not None and growth > max_rss_growth_bytes:
        failures.append(
            f"service RSS grew {growth / MIB:.0f} MiB (limit {max_rss_growth_bytes / MIB:.0f} MiB)"
        )
    service = report["service"]
    if service.get("error"):
        failures.append(f"the service did not start: {service['error'][:300]}")
    if service.get("exit_code") not in (None, 0) or service.get("killed"):
        failures.append(f"exec-agent serve did not stop cleanly (exit {service.get('exit_code')})")
    return failures


def summary_text(report: dict[str, Any]) -> str:
    config, service = report["config"], report["service"]
    lines = [
        f"soak: {config['duration_s']} s, {config['workers']} workers, {config['keys']} keys "
        f"against {service.get('url')}"
    ]
    run = report["requests"].get("run")
    if run:
        lat = run["latency"]
        lines += [
            f"  requests: {run['total']} ({run['accepted']} accepted, "
            f"{run['refused_overloaded']} overloaded); HTTP {run['by_http_status']}",
            f"  answered runs: {run['by_execution_status']}; background runs, in the end: "
            f"{report['requests']['background_final_status']}",
            f"  latency: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms",
        ]
    mem = report["memory"]
    if mem.get("growth_bytes") is not None:
        lines.append(
            f"  service RSS: start {mem['start']['rss_bytes'] / MIB:.0f} MiB, baseline "
            f"{mem['baseline']['counted_rss_bytes'] / MIB:.0f} MiB, end "
            f"{mem['end']['counted_rss_bytes'] / MIB:.0f} MiB (growth "
            f"{mem['growth_bytes'] / MIB:+.0f} MiB; idle Ray workers left out)"
        )
    for where, check in report["records"].items():
        if check:
            lines.append(
                f"  records ({where}): {check['accepted']} accepted, {check['records']} stored, "
                f"{check['missing']} missing, {check['not_terminal']} not terminal, "
                f"phantoms {check['phantoms']}"
            )
    if report["leftovers"]:
        lines.append(
            "  leftovers: "
            + ", ".join(
                f"{name} {len(value) if isinstance(value, list) else value}"
                for name, value in report["leftovers"].items()
            )
        )
    if "exit_code" in service:
        lines.append(f"  stopped: exit {service['exit_code']} after {service.get('stop_s')} s")
    lines.append("  verdict: " + ("PASS" if not report["failures"] else "FAIL"))
    lines += [f"    - {failure}" for failure in report["failures"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def loopback_url(url: str) -> str:
    """``url`` if its host is a loopback address (127.0.0.0/8, ::1), else ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http URL: {url!r}")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise ValueError(f"{parts.hostname!r} is not an IP address: use 127.0.0.1") from None
    if not address.is_loopback:
        raise ValueError(f"{parts.hostname} is not loopback: the soak runs against 127.0.0.1 only")
    return url.rstrip("/")


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/soak",
        description="Load the service on loopback for a bounded time; check nothing is lost or leaked.",
    )
    parser.add_argument(
        "--duration-s", type=positive_int, default=300, help="load time (default 300)"
    )
    parser.add_argument(
        "--warmup-s", type=non_negative_float, default=None,
        help="warm-up before the measured run (default: a tenth of the duration, at most 15)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=positive_int, default=8, help="client threads (default 8)"
    )
    parser.add_argument(
        "--keys", type=positive_int, default=3, help="API keys to create (default 3)"
    )
    parser.add_argument("--slots", type=positive_int, default=2, help="sandbox slots (default 2)")
    parser.add_argument(
        "--executor-queue", type=positive_int, default=4,
        help="EXECUTOR_MAX_QUEUED_REQUESTS of the service started here (default 4: small, so "
        "that the load meets back-pressure)",
    )  # fmt: skip
    parser.add_argument("--url", help="a running service on loopback instead of starting one")
    parser.add_argument(
        "--key", action="append", default=[], help="an API key of --url (repeatable)"
    )
    parser.add_argument(
        "--service-pid", type=positive_int,
        help="with --url: the pid of its exec-agent serve, for the memory and process checks",
    )  # fmt: skip
    parser.add_argument(
        "--max-body-bytes", type=positive_int, default=DEFAULT_MAX_BODY_BYTES,
        help="with --url: its MAX_BODY_BYTES (default 2 MiB)",
    )  # fmt: skip
    parser.add_argument(
        "--max-rss-growth-mib", type=positive_int, default=256,
        help="the service's RSS may grow this much from the baseline (default 256)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes")
    return parser


@dataclass
class Target:
    url: str
    keys: list[str]
    exclusive_keys: bool
    root_pid: int | None
    slot_uids: range
    serve: ServeProcess | None = None
    info: dict[str, Any] = field(default_factory=dict)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.url is None and (args.key or args.service_pid):
        parser.error("--key and --service-pid go with --url")
    if args.url is not None:
        try:
            args.url = loopback_url(args.url)
        except ValueError as exc:
            parser.error(str(exc))
        if not args.key:
            parser.error("--url needs at least one --key")
    warmup_s = args.warmup_s if args.warmup_s is not None else min(15.0, args.duration_s / 10)
    with tempfile.TemporaryDirectory(prefix="exec-agent-soak-") as tmp:
        report = soak(args, warmup_s, Path(tmp))
    report["failures"] = verdict(report, args.max_rss_growth_mib * MIB)
    text = json.dumps(report, indent=2, sort_keys=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    print(summary_text(report), file=sys.stderr)
    return 1 if report["failures"] else 0


def soak(args: argparse.Namespace, warmup_s: float, workdir: Path) -> dict[str, Any]:
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
        "background_final_status": _counts(background.values()),
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


if __name__ == "__main__":
    sys.exit(main())
