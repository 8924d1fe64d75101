"""The server's side of one decode worker process (`decode_worker`): start, call, kill.

A call blocks its thread until the worker answers, so it runs on a decode thread. `kill`
may come from any thread (a request that timed out, a server that stops): the blocked call
then returns at once with `DecodeAbandonedError`, and the process is gone; the pool starts
another in its place.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading

import numpy as np

from fisheye.data.images import ImageDecodeError, ImageTooLargeError, UnsupportedFormatError
from fisheye.serving.decode_worker import READY, DecodeJob

log = logging.getLogger(__name__)
START_TIMEOUT_S = 60.0
_ERRORS = {
    cls.__name__: cls for cls in (ImageDecodeError, ImageTooLargeError, UnsupportedFormatError)
}


class DecodeAbandonedError(RuntimeError):
    """The decode was stopped before it finished (its request went away, or the server is
    stopping); its worker process was ended."""


class DecodeTooCostlyError(ImageTooLargeError):
    """The decode used up its CPU-time limit (the worker was ended by the kernel)."""


class DecodeProcess:
    """One worker process and the pipes to it."""

    def __init__(self, address_space: int) -> None:
        from multiprocessing.connection import Connection

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        cmd = [sys.executable, "-m", "fisheye.serving.decode_worker"]
        cmd += [str(to_child_r), str(from_child_w), str(address_space)]
        try:
            self.process = subprocess.Popen(
                cmd, pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)
        self._conns = (self._send, self._recv)
        self._killed = False
        self._killed_by_us = False
        self._lock = threading.Lock()
        if not self._recv.poll(START_TIMEOUT_S) or self._recv.recv_bytes() != READY:
            self.kill()
            raise RuntimeError("the decode worker did not start")

    @property
    def alive(self) -> bool:
        """Whether the process can take another photo."""
        return not self._killed and self.process.poll() is None

    def call(self, job: DecodeJob, data: bytes) -> np.ndarray:
        """Decode and preprocess one photo in the worker (ImageDecodeError as the worker
        raised it; DecodeTooCostlyError past the CPU limit; DecodeAbandonedError if killed)."""
        try:
            self._send.send(job)
            self._send.send_bytes(data)
            header = json.loads(self._recv.recv_bytes())
            if "error" in header:
                raise _ERRORS.get(header["error"], ImageDecodeError)(header["detail"])
            raw = self._recv.recv_bytes()
        except (EOFError, OSError):
            raise self._died(job) from None
        return np.frombuffer(raw, dtype=np.dtype(header["dtype"])).reshape(header["shape"])

    def _died(self, job: DecodeJob) -> Exception:
        self.kill()
        code = self.process.wait()
        if self._killed_by_us:
            return DecodeAbandonedError("the decode was stopped before it finished")
        if code == -signal.SIGXCPU:
            return DecodeTooCostlyError(
                f"the image is too costly to decode: decoding it took more than "
                f"{job.max_cpu_s:g} s of CPU time"
            )
        log.warning("a decode worker ended with status %s while decoding a photo", code)
        return ImageDecodeError(f"the decoder failed on this image (worker status {code})")

    def kill(self, *, abandon: bool = False) -> None:
        """End the process now (from any thread); `abandon`: the caller stopped the decode."""
        with self._lock:
            if abandon:
                self._killed_by_us = True
            if self._killed:
                return
            self._killed = True
        if self.process.poll() is None:
            self.process.kill()

    def close(self) -> None:
        """End the process and reap it (once; from any thread)."""
        self.kill(abandon=True)
        self.process.wait()
        with self._lock:
            conns, self._conns = self._conns, ()
        for conn in conns:
            conn.close()
