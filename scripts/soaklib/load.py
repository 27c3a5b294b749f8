"""The soak's load: worker threads sending a weighted mix of requests (ordinary programs, the
adversarial corpus, bad HTTP input) one after another, each answer checked against the one the
kind allows and kept as an ``Outcome``."""

from __future__ import annotations

import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .corpus import BREACH, CorpusEntry, Listeners

CLIENT_TIMEOUT_S = 120.0
MAX_BACK_OFF_S = 5.0
"""A worker refused with ``Retry-After`` waits that long, at most this."""

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
"""The request mix: each kind's share of the requests a worker draws."""


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
