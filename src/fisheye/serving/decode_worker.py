"""A decode worker process: decodes and preprocesses photos sent by the server, one at a time.

    python -m fisheye.serving.decode_worker IN_FD OUT_FD ADDRESS_SPACE_BYTES

Started by `decode_processes.DecodeProcess`. It imports only what decoding needs (numpy,
Pillow, fisheye.data) and limits itself before the first photo: its address space to
ADDRESS_SPACE_BYTES more than it holds after those imports (a decoder that asks for more
gets MemoryError: a 413), no core files, and for each photo a CPU-time limit (RLIMIT_CPU:
the kernel ends the process with SIGXCPU when a decode passes it, which the server reports
as a photo too costly to decode and replaces the worker).

Protocol, over two pipes (multiprocessing.connection framing):
  server -> worker: a pickled `DecodeJob`, then the photo's bytes;
  worker -> server: a JSON header, then for a success the array's bytes.
The worker never sends pickles back: its input is untrusted, the server's is not.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from fisheye.data.images import ImageDecodeError, decode_image
from fisheye.data.preprocess import Preprocessing, preprocess
from fisheye.serving.memory import return_large_buffers_to_the_os, trim_freed_memory

READY = b"ready"


@dataclass(frozen=True)
class DecodeJob:
    """What to do with one photo: the bundle's preprocessing within the decode limits."""

    preprocessing: Preprocessing
    max_pixels: int
    max_decode_bytes: int
    max_cpu_s: float


def run_job(job: DecodeJob, data: bytes) -> np.ndarray:
    """The (3, H, W) float32 model input: the same steps as `PhotoPreparer`."""
    img = decode_image(data, job.max_pixels, max_decode_bytes=job.max_decode_bytes)
    return preprocess(img, job.preprocessing)


def _vm_size() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _limit(kind: int, soft: int) -> None:
    import resource  # POSIX only: the worker runs where the server can start processes

    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(kind, (soft, hard))


def _cpu_used_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve(conn_in: Connection, conn_out: Connection, address_space: int) -> None:
    """Answer jobs until the server closes the pipe."""
    import resource

    return_large_buffers_to_the_os()
    _limit(resource.RLIMIT_CORE, 0)
    base = _vm_size()
    if base is not None and address_space > 0:
        _limit(resource.RLIMIT_AS, base + address_space)
    conn_out.send_bytes(READY)
    while True:
        try:
            job: DecodeJob = conn_in.recv()
            data = conn_in.recv_bytes()
        except (EOFError, OSError):
            return
        # The soft limit counts the process's whole life: this photo may use max_cpu_s more.
        _limit(resource.RLIMIT_CPU, math.ceil(_cpu_used_s() + job.max_cpu_s))
        try:
            out = run_job(job, data)
        except ImageDecodeError as exc:
            header = {"error": type(exc).__name__, "detail": str(exc)}
            conn_out.send_bytes(json.dumps(header).encode())
        else:
            out = np.ascontiguousarray(out)
            header = {"shape": list(out.shape), "dtype": out.dtype.str}
            conn_out.send_bytes(json.dumps(header).encode())
            conn_out.send_bytes(memoryview(out).cast("B"))
        del data
        trim_freed_memory()


def main(argv: list[str]) -> None:
    """Entry point: the pipes' file descriptors and the address-space allowance."""
    fd_in, fd_out, address_space = (int(a) for a in argv[:3])
    # Anything printed by a library goes to stderr, never into the protocol's pipes.
    sys.stdout = sys.stderr
    serve(Connection(fd_in, writable=False), Connection(fd_out, readable=False), address_space)


if __name__ == "__main__":
    main(sys.argv[1:])
