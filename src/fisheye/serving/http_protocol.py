"""uvicorn's HTTP protocol with two limits it lacks, enforced as the bytes arrive.

uvicorn (with httptools) reads a request's headers whatever their size and waits for them
as long as a client likes: 200 MiB of headers were read into memory before the app could
answer 431, and a connection that sends nothing stayed open for ever. This protocol counts
header bytes as they arrive (431 and close at the limit) and gives the request line and
headers a deadline from the connection's start, or from the first byte of each next
request (408 and close). Idle keep-alive connections are still closed by uvicorn's own
keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fisheye.serving.middleware import CSP, SECURITY_HEADERS
from fisheye.serving.settings import ServeSettings

END_OF_HEADERS = b"\r\n\r\n"
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a header size limit and a header deadline."""

    max_header_bytes = 16 * 1024
    header_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._start_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers and not self._count(data):
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_headers:  # the next request on a kept-alive connection
            self._start_headers()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._stop_header_timer()
        super().on_headers_complete()

    def _start_headers(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        self._tail = b""
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _count(self, data: bytes) -> bool:
        """Count the header bytes in `data`; False (after a 431) once over the limit."""
        window = self._tail + data
        end = window.find(END_OF_HEADERS)
        if end >= 0:
            total = self._header_bytes + end + len(END_OF_HEADERS) - len(self._tail)
        else:
            total = self._header_bytes + len(data)
            self._tail = window[-(len(END_OF_HEADERS) - 1) :]
        self._header_bytes = total
        if total > self.max_header_bytes:
            self._refuse(
                431,
                "headers_too_large",
                f"the request headers are over the {self.max_header_bytes:,} byte limit",
            )
            return False
        return True

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._in_headers and not self.transport.is_closing():
            self._refuse(
                408,
                "request_timeout",
                f"the request headers did not arrive within {self.header_timeout_s:g} s",
            )

    def _refuse(self, status: int, error: str, detail: str) -> None:
        body = json.dumps({"error": error, "detail": detail}).encode()
        head = [
            b"HTTP/1.1 %d %s" % (status, REASONS[status]),
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"connection: close",
            *(name + b": " + value for name, value in SECURITY_HEADERS),
            b"content-security-policy: " + CSP.encode(),
        ]
        self._in_headers = False
        self._stop_header_timer()
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()


def protocol_for(settings: ServeSettings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn should use, with the settings' limits."""
    return type(
        "FishEyeHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "header_timeout_s": settings.request_timeout_s,
        },
    )
