"""A small client of a running server's /v1/admin endpoints (the `fisheye admin` commands).

Standard library only (urllib), so it works in the lean serving install.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


class AdminClientError(RuntimeError):
    """The server refused the call (status and its JSON error), or could not be reached."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = error


class AdminClient:
    """Calls /v1/admin/* on `url` with `Authorization: Bearer <token>`."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 300.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout  # a swap loads and warms a model: allow minutes

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One admin call; the server's JSON answer, or AdminClientError."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            f"{self.url}/v1/admin/{path}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())
            except ValueError:
                err = {"error": "http_error", "detail": exc.reason}
            raise AdminClientError(
                f"{exc.code} {err.get('error')}: {err.get('detail')}", exc.code, err.get("error")
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminClientError(f"cannot reach FishEye at {self.url}: {reason}") from None

    def status(self) -> dict[str, Any]:
        """Live, previous and challenger models."""
        return self.call("GET", "status")

    def swap(self, model: str) -> dict[str, Any]:
        """Hot swap the live model."""
        return self.call("POST", "model", {"model": model})

    def reload(self) -> dict[str, Any]:
        """Reload the configured model."""
        return self.call("POST", "reload")

    def attach(self, model: str, mode: str, share: float) -> dict[str, Any]:
        """Attach a challenger."""
        return self.call("POST", "challenger", {"model": model, "mode": mode, "share": share})

    def detach(self) -> dict[str, Any]:
        """Drop the challenger."""
        return self.call("DELETE", "challenger")

    def promote(self) -> dict[str, Any]:
        """Make the challenger live."""
        return self.call("POST", "promote")

    def rollback(self) -> dict[str, Any]:
        """Make the previous live model live again."""
        return self.call("POST", "rollback")
