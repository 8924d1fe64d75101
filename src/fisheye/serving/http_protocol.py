"""uvicorn's HTTP protocol with the limits it lacks, enforced as the bytes arrive.

uvicorn (with httptools) reads a request's headers whatever their size and waits for them
as long as a client likes: 200 MiB of headers were read into memory before the app could
answer 431, and a connection that sends nothing stayed open for ever. This protocol counts
header bytes as they arrive (431 and close at the limit) and gives the request line and
headers a deadline from the connection's start, or from the first byte of each next
request (408 and close). Idle keep-alive connections are still closed by uvicorn's own
keep-alive timeout.

A request's body has a deadline too, which holds after the answer: uvicorn keeps reading
(and dropping) a body the app did not read, so a client that declared a huge body and sent
a byte every few seconds held its connection for ever. Once the answer is sent, the rest of
such a body is read only if it is at most `max_unread_body_bytes` and arrives within
`body_timeout_s` of the request's headers; otherwise the connection is closed. An answer
that starts while more than that is still to come says `Connection: close`. A connection
closed while a body is arriving is closed gently: the server stops writing, drops what still
arrives for `LINGER_S`, then closes (closing with unread input at once resets the
connection, and the client may lose the answer it has not read yet).

uvicorn's own 400 for a malformed request line or headers is a JSON error with the
security headers, like every other answer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fisheye.serving.middleware import CSP, SECURITY_HEADERS
from fisheye.serving.settings import ServeSettings

END_OF_HEADERS = b"\r\n\r\n"
REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}
LINGER_S = 2.0  # after the server stops writing, how long it still drops what arrives
CLOSE = (b"connection", b"close")


class _LingeringTransport:
    """A connection's transport whose `close()` lingers while a request body is arriving."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol):
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()

    def close(self) -> None:
        if self._protocol._body_pending and not self.is_closing():
            self._protocol._linger_and_close()
        else:
            self._transport.close()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header limits and a body deadline that outlives the answer."""

    max_header_bytes = 16 * 1024
    header_timeout_s = 30.0
    body_timeout_s = 30.0
    max_unread_body_bytes = 64 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw_transport = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self.app = self._closing_when_unread(self.app)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_pending = False
        self._body_left: int | None = None  # bytes still declared; None when chunked
        self._body_deadline = 0.0
        self._unread = 0  # body bytes dropped since the answer was sent
        self._lingering = False
        self._start_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        self._stop_body_timer()
        self._body_pending = False  # nothing left to linger for
        super().connection_lost(exc)

    def _closing_when_unread(self, app: ASGIApp) -> ASGIApp:
        """`app`, whose answers say `Connection: close` when the rest of the request body
        will not be read (too long, or late)."""

        async def closing_when_unread(scope: Scope, receive: Receive, send: Send) -> None:
            async def send_closing(message: Message) -> None:
                if (
                    message["type"] == "http.response.start"
                    and scope is self.scope  # not a request answered behind a pipelined one
                    and self._body_pending
                    and self._unread_body_too_long()
                ):
                    message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
                await send(message)

            await app(scope, receive, send_closing)

        return closing_when_unread

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the connection is closing: what still arrives is dropped unparsed
        if self._in_headers and not self._count(data):
            return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "bad_request", f"malformed HTTP request: {msg}")

    def on_message_begin(self) -> None:
        if self._lingering:
            return
        super().on_message_begin()
        if not self._in_headers:  # the next request on a kept-alive connection
            self._start_headers()

    def on_headers_complete(self) -> None:
        if self._lingering:
            return  # a request pipelined behind a refused body is not answered
        self._in_headers = False
        self._stop_header_timer()
        self._start_body()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._body_left is not None:
            self._body_left -= len(body)
        if self.cycle is not None and self.cycle.response_complete:
            self._unread += len(body)
            if self._unread > self.max_unread_body_bytes:
                self._linger_and_close()
                return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._stop_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._body_pending or self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_complete:
            return  # a pipelined request is answered next: its body is not late yet
        # Answered before its body arrived: the rest must be short, and arrive in time.
        self._unread = 0
        if self._unread_body_too_long():
            self._linger_and_close()
        else:
            self._stop_body_timer()
            self._body_timer = self.loop.call_at(self._body_deadline, self._body_too_slow)

    def _unread_body_too_long(self) -> bool:
        """Whether the rest of the body is more than the server drains, or late already."""
        left = self._body_left
        too_long = left is None or left > self.max_unread_body_bytes
        return too_long or self.loop.time() >= self._body_deadline

    def _start_body(self) -> None:
        length = None
        chunked = False
        for name, value in self.headers:
            if name == b"content-length":
                length = int(value) if value.strip().isdigit() else None
            elif name == b"transfer-encoding":
                chunked = True
        self._body_left = None if chunked else (length or 0)
        self._body_pending = chunked or bool(length)
        self._body_deadline = self.loop.time() + self.body_timeout_s
        self._stop_body_timer()

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self._body_pending and not self.transport.is_closing():
            self._linger_and_close()

    def _linger_and_close(self) -> None:
        """Stop writing, drop further input for LINGER_S, then close the connection."""
        if self._lingering or self.transport.is_closing():
            return
        self._lingering = True
        self._stop_body_timer()
        self._unset_keepalive_if_required()
        self.flow.resume_reading()  # uvicorn pauses a body the app does not read: drop it
        if self._raw_transport.can_write_eof():
            self._raw_transport.write_eof()
        self.loop.call_later(LINGER_S, self._raw_transport.close)

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
        if not self._lingering and not self.transport.is_closing():
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
            "body_timeout_s": settings.request_timeout_s,
            "max_unread_body_bytes": settings.max_unread_body_bytes,
        },
    )
