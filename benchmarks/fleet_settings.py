"""Per-replica settings for N FishEye replicas sharing one host's cores.

Each replica sizes its thread pools from the host's cores by default (FISHEYE_MODEL_WORKERS
and FISHEYE_DECODE_WORKERS) and runs a lone photo on FISHEYE_THREADS intra-op threads, so N
replicas on one host start N times as many busy threads as there are cores. The fleet
benchmarks give each replica its share of the cores instead (at least one each).
"""

from __future__ import annotations

import os


def per_replica_settings(replicas: int, cores: int | None = None) -> dict[str, str]:
    """FISHEYE_* thread settings for one of `replicas` replicas on a host of `cores` cores."""
    share = max(1, (cores or os.cpu_count() or 1) // max(1, replicas))
    return {
        "FISHEYE_THREADS": str(share),
        "FISHEYE_MODEL_WORKERS": str(share),
        "FISHEYE_DECODE_WORKERS": str(share),
    }
