"""The adversarial corpus' entries that attack the output and input streams, run again the way a
streamed, interactive run goes (output handed on as it is read, standard input a pipe the host
writes as its client types, ended at once here as a client's ``stdin_eof``): each entry's
expectation and the corpus' invariants hold as they do for a plain run, and what was streamed is
exactly what the record keeps."""

from __future__ import annotations

import threading

import pytest

from executors import ExecutionRecord
from executors._sandbox import LiveIO, StdinFeed
from tests.support.corpus import CORPUS, ENGINE_ENTRIES, request_fields
from tests.support.corpus_checks import CHECKS
from tests.support.watched_pool import WatchedPool

pytestmark = pytest.mark.sandbox

STREAM_CATEGORIES = ("stream", "output", "unicode", "crash", "control", "lifecycle", "resource/fd")
SLOW_OR_REPEATED = ("nondaemon_thread_outlives_main", "zombie_farm")
"""Run until the wall limit, or many times: tests/test_security_corpus.py covers them."""
STREAMED = [
    name
    for name in ENGINE_ENTRIES
    if CORPUS[name]["category"] in STREAM_CATEGORIES or name == "tiocsti_terminal_injection"
    if name not in SLOW_OR_REPEATED
]


class Streamed:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.text = {"stdout": "", "stderr": ""}

    def __call__(self, stream: str, text: str) -> None:
        with self.lock:
            self.text[stream] += text


@pytest.mark.parametrize("name", STREAMED)
def test_corpus_entry_streamed(name: str, sandbox: WatchedPool) -> None:
    streamed = Streamed()
    feed = StdinFeed()
    feed.end()  # the client's stdin_eof: the program sees the request's stdin, then its end
    request = sandbox.request(CORPUS[name]["code"], **request_fields(name))
    with sandbox.watch():
        record: ExecutionRecord = sandbox.pool.run(
            request, live=LiveIO(on_output=streamed, stdin=feed)
        )
        sandbox.check_record(record, request.limits)
    CHECKS[name](record)
    assert streamed.text == {"stdout": record.stdout, "stderr": record.stderr}


def test_the_streamed_entries_are_the_stream_attacks() -> None:
    wanted = {"binary_non_utf8_output", "stdin_blocking_read", "stream_one_byte_write_flood"}
    assert wanted <= set(STREAMED)
