"""HTTP/1.1 over raw sockets: the slow, stalled and malformed clients of the server tests."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to the server at `url`."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response read off a raw socket (status, lower-case headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed mid-response: {data[:200]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_while_trickling(sock: socket.socket, seconds: float, every: float = 0.5) -> float | None:
    """Send one byte every `every` s; the seconds until the server closes the connection
    (EOF or reset), or None if it is still open after `seconds`."""
    start = time.monotonic()
    sock.settimeout(every)
    while time.monotonic() - start < seconds:
        try:
            sock.send(b"x")
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:  # reset, broken pipe
            return time.monotonic() - start
    return None
