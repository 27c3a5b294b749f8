"""Interactive standard input across Ray: from the API replica that holds a client's connection
to the executor replica (or session host) running the client's program.

Serve routes each call to any replica, so the input cannot follow the run through the
deployment handle. Instead each API replica owns one small async actor, a :class:`StdinRelay`,
holding a queue per run ("channel"); the replica puts its client's text there, and the run's
side takes it with a long poll (:func:`pull_stdin` on an event loop, :func:`pull_stdin_blocking`
on a thread) and writes it to the program. The relay holds at most ``max_pending_bytes`` per
channel: a program that does not read makes its client's ``send`` fail
(:class:`~executors._errors.StdinOverflowError`) instead of filling memory anywhere.

    relays = StdinRelays()                         # one per API replica
    channel = await relays.open()                  # picklable: pass it with the run
    await relays.send(channel, "Ada\\n")
    await relays.end(channel)                      # end of file after what was sent
    await relays.close(channel)                    # the run is over
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from executors._errors import StdinOverflowError
from executors._sandbox import MAX_PENDING_STDIN_BYTES, StdinFeed

__all__ = [
    "StdinChannel",
    "StdinRelay",
    "StdinRelays",
    "pull_stdin",
    "pull_stdin_blocking",
]

logger = logging.getLogger("executors.stdin")

TAKE_WAIT_S = 10.0
"""How long one long poll of the run's side waits for text before asking again."""
FEED_FULL_WAIT_S = 0.02
"""How long the run's side waits for its program to read before taking more."""


@dataclass(frozen=True)
class StdinChannel:
    """One run's input queue on a relay (picklable: it travels with the run's request)."""

    relay: Any
    """The :class:`StdinRelay` actor's handle."""
    name: str


@dataclass
class _Queue:
    texts: deque[str] = field(default_factory=deque)
    size: int = 0
    ended: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class StdinRelay:
    """The actor: per channel, text waiting for its run (async: every method is quick or a long
    poll, so one event loop serves them all)."""

    def __init__(self, max_pending_bytes: int = MAX_PENDING_STDIN_BYTES) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._queues: dict[str, _Queue] = {}

    async def open(self, name: str) -> None:
        self._queues.setdefault(name, _Queue())

    async def put(self, name: str, text: str) -> bool:
        """Queue ``text``; False (nothing queued) past ``max_pending_bytes``, or if the channel
        ended or is gone."""
        queue = self._queues.get(name)
        if queue is None or queue.ended:
            return False
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if queue.size + size > self.max_pending_bytes:
            return False
        queue.texts.append(text)
        queue.size += size
        queue.ready.set()
        return True

    async def end(self, name: str) -> None:
        queue = self._queues.get(name)
        if queue is not None:
            queue.ended = True
            queue.ready.set()

    async def take(self, name: str, wait_s: float = TAKE_WAIT_S) -> list[str] | None:
        """What waits on ``name`` (waiting up to ``wait_s`` for something); None once it ended
        and was taken, or is gone."""
        queue = self._queues.get(name)
        if queue is None:
            return None
        if not queue.texts and not queue.ended:
            queue.ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.ready.wait(), wait_s)
        texts = list(queue.texts)
        queue.texts.clear()
        queue.size = 0
        if not texts and queue.ended:
            return None
        return texts

    async def close(self, name: str) -> None:
        queue = self._queues.pop(name, None)
        if queue is not None:
            queue.ended = True
            queue.ready.set()

    async def channels(self) -> int:
        return len(self._queues)


class StdinRelays:
    """An API replica's relay: started at the first :meth:`open`, owned by the replica (it dies
    with it), placed anywhere (no CPU reserved)."""

    def __init__(self, max_pending_bytes: int = MAX_PENDING_STDIN_BYTES) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._actor: Any = None
        self._starting = asyncio.Lock()

    async def _relay(self) -> Any:
        async with self._starting:
            if self._actor is None:
                import ray

                relay_class: Any = ray.remote(StdinRelay)
                actor = relay_class.options(num_cpus=0, max_concurrency=1000).remote(
                    self.max_pending_bytes
                )
                await actor.channels.remote()  # started: the first run does not wait on it
                self._actor = actor
            return self._actor

    async def open(self) -> StdinChannel:
        relay = await self._relay()
        channel = StdinChannel(relay, uuid.uuid4().hex)
        await relay.open.remote(channel.name)
        return channel

    async def send(self, channel: StdinChannel, text: str) -> None:
        """Queue ``text`` for the run; :class:`StdinOverflowError` if it did not fit."""
        if not await channel.relay.put.remote(channel.name, text):
            raise StdinOverflowError(self.max_pending_bytes)

    async def end(self, channel: StdinChannel) -> None:
        await channel.relay.end.remote(channel.name)

    async def close(self, channel: StdinChannel) -> None:
        with contextlib.suppress(Exception):  # the relay is gone: so is the queue
            await channel.relay.close.remote(channel.name)

    def shutdown(self) -> None:
        if self._actor is not None:
            import ray

            with contextlib.suppress(Exception):
                ray.kill(self._actor)
            self._actor = None


def _put(feed: StdinFeed, data: bytes) -> bool:
    """Whether ``data`` went into ``feed`` (False: no room yet; the relay's cap is the feed's,
    so it fits once the program has read)."""
    try:
        feed.put(data)
    except StdinOverflowError:
        return False
    return True


async def pull_stdin(channel: StdinChannel, feed: StdinFeed) -> None:
    """(The run's side, on an event loop.) Move the channel's text into ``feed`` until the
    input ends; the relay gone counts as the end. Cancel it when the run is over."""
    try:
        while True:
            while feed.pending_bytes >= feed.max_pending_bytes:
                await asyncio.sleep(FEED_FULL_WAIT_S)  # the program is not reading: wait
            texts = await channel.relay.take.remote(channel.name)
            if texts is None:
                break
            for text in texts:
                data = text.encode("utf-8", errors="replace")
                while not _put(feed, data):
                    await asyncio.sleep(FEED_FULL_WAIT_S)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the relay died (its replica went away): input ends
        logger.warning("standard input relay lost: %s", type(exc).__name__)
    feed.end()


def pull_stdin_blocking(channel: StdinChannel, feed: StdinFeed, stop: threading.Event) -> None:
    """:func:`pull_stdin` on a thread of its own, until the input ends or ``stop`` is set."""
    import ray

    try:
        while not stop.is_set():
            if feed.pending_bytes >= feed.max_pending_bytes:
                time.sleep(FEED_FULL_WAIT_S)
                continue
            texts = ray.get(channel.relay.take.remote(channel.name, 1.0))
            if texts is None:
                break
            for text in texts:
                data = text.encode("utf-8", errors="replace")
                while not _put(feed, data) and not stop.is_set():
                    time.sleep(FEED_FULL_WAIT_S)
    except Exception as exc:  # noqa: BLE001 - the relay died (its replica went away): input ends
        logger.warning("standard input relay lost: %s", type(exc).__name__)
    feed.end()
