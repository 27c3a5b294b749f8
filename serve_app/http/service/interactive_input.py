"""A run's standard input over ``/v1/ws``: what its client sends, capped, relayed to the program
(:class:`executors.StdinRelays`), ended at most once.

    run_input = RunInput(relays, await relays.open(), max_bytes=settings.ws_max_stdin_bytes)
    refusal = await run_input.send("Ada\\n")   # None: on its way; else the error to answer
    refusal = await run_input.end()             # the program's next read sees EOF
    await run_input.close()                     # always, once the run is over

A refusal leaves the run going: text past ``WS_MAX_STDIN_BYTES`` for the run, or past what the
relay holds for a program that does not read, is ``payload_too_large`` and not sent at all;
text after the end, or a second end, is ``invalid_request``. Anything else the relay raises
(its actor gone, say) is the caller's to answer.
"""

from __future__ import annotations

import logging

from executors import StdinChannel, StdinOverflowError, StdinRelays
from serve_app.api import ApiError, api_error
from serve_app.errors import InvalidRequestError
from serve_app.http.service.interactive_messages import too_large

__all__ = ["RunInput"]

logger = logging.getLogger(__name__)


class RunInput:
    """One run's standard input from its client."""

    def __init__(self, relays: StdinRelays, channel: StdinChannel, *, max_bytes: int) -> None:
        self.channel = channel
        self.max_bytes = max_bytes
        self.sent_bytes = 0
        self.ended = False
        self._relays = relays

    async def send(self, text: str) -> ApiError | None:
        """Relay ``text`` to the program; the refusal, if it is not sent."""
        if self.ended:
            return api_error(InvalidRequestError("standard input has ended (stdin_eof)"))
        size = len(text.encode("utf-8"))
        if self.sent_bytes + size > self.max_bytes:
            limit = self.max_bytes
            return too_large(f"a run takes at most {limit} bytes of standard input: not sent")
        try:
            await self._relays.send(self.channel, text)
        except StdinOverflowError as exc:
            return too_large(f"{exc}: not sent")
        self.sent_bytes += size
        return None

    async def end(self) -> ApiError | None:
        """End the program's standard input (after what was sent); the refusal of a second."""
        if self.ended:
            return api_error(InvalidRequestError("stdin_eof was sent already"))
        self.ended = True
        await self._relays.end(self.channel)
        return None

    async def close(self) -> None:
        """Forget the channel (the run is over either way)."""
        try:
            await self._relays.close(self.channel)
        except Exception as exc:  # noqa: BLE001 - nothing reads it any more
            logger.warning("stdin channel not closed: %s", type(exc).__name__)
