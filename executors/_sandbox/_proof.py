"""The host's end of a judged job's proof that its ``test_code`` ran to the end.

Per job the host draws a fresh random nonce and opens a pipe. The nonce travels in the job's
payload (read and closed before the program's code runs), the pipe's write end as a descriptor
of its own; the harness in ``zygote.py`` writes the nonce there only once ``test_code``
returned, and only from the program's own process. The program's status, its output and
its exit code say nothing about the verdict: only exactly the nonce on this pipe does.
"""

from __future__ import annotations

import hmac
import os
import secrets

__all__ = ["NONCE_BYTES", "ProofChannel"]

NONCE_BYTES = 16
"""128 bits: not guessable within a job's lifetime."""


class ProofChannel:
    """A nonce and the pipe it must come back on. The write end goes to the job."""

    def __init__(self) -> None:
        self.nonce = secrets.token_bytes(NONCE_BYTES)
        self.read_fd, self.write_fd = os.pipe()

    def proved(self) -> bool:
        """Whether exactly the nonce came back, nothing more or less.

        Read once without waiting, after the job is over: a descendant of the program may
        still hold the write end, so EOF may never come; the harness wrote before exiting.
        """
        os.set_blocking(self.read_fd, False)
        try:
            data = os.read(self.read_fd, NONCE_BYTES + 1)
        except BlockingIOError:
            return False
        return hmac.compare_digest(data, self.nonce)

    def close(self) -> None:
        """Close the host's read end (the write end is closed once handed to the job)."""
        os.close(self.read_fd)
