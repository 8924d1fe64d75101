"""What the server refuses when it is full, without knowing HTTP: `OverloadedError`.

The decode pool and the upload budget raise it; the HTTP layer answers 503 with
`Retry-After` (`serving.errors`).
"""

from __future__ import annotations


class OverloadedError(RuntimeError):
    """The server holds its limit of some resource; the client should retry shortly."""


class UploadBudget:
    """Photo bytes held in memory by all requests together, up to `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0  # only touched from the event loop

    def take(self, n: int) -> None:
        """Reserve n bytes (OverloadedError when the server already holds its share)."""
        if self.used + n > self.max_bytes:
            raise OverloadedError(
                "the server is holding its limit of uploaded photos; retry shortly"
            )
        self.used += n

    def give(self, n: int) -> None:
        """Release n reserved bytes."""
        self.used -= n
