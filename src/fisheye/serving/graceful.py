"""A uvicorn server whose graceful stop answers every request in flight.

uvicorn stops on SIGTERM by waiting up to `timeout_graceful_shutdown` seconds for the
requests in flight, then cancelling them (the client gets a 500 or a reset). A photo's
decode is the one step that can run that long, so the stop begins by giving decodes
`DECODE_GRACE_S`: those still running then are ended and their requests answered 503
`shutting_down` with Retry-After, well before uvicorn's own timeout.
"""

from __future__ import annotations

import socket

import uvicorn

from fisheye.serving.state import ServingState

GRACEFUL_TIMEOUT_S = 10
DECODE_GRACE_S = 5.0


class GracefulServer(uvicorn.Server):
    """uvicorn's server that lets decodes finish within DECODE_GRACE_S when it stops."""

    def __init__(self, config: uvicorn.Config, state: ServingState) -> None:
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Bound the decodes in flight, then uvicorn's stop (which waits for requests)."""
        if self.state.decoder is not None:
            self.state.decoder.stop_within(DECODE_GRACE_S)
        await super().shutdown(sockets)
