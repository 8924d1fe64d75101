"""Whether made-up credentials get past a FishEye server's rate limit, and what they cost it.

    python -m benchmarks.rate_limit_bypass                 # from the repository root
    python -m benchmarks.rate_limit_bypass --pythonpath /path/to/other/src

Starts `fisheye serve` on 127.0.0.1 (the tiny random model) with a rate limit of
`--rate`/s (burst `--burst`) and one API key, then from one address:
- sends `--requests` predictions, each with a new made-up `Authorization: Bearer` token, and
  as many with a new made-up `X-API-Key`, and counts those not answered 429 (the limit did
  not hold them back);
- sends `--tokens` requests to /v1/model, each with a new made-up 15 KB bearer token, and
  prints the server's resident memory before and after (the limiter's memory).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.local_server import start_server, stop_server
from tests.helpers.bundles import make_bundle
from tests.helpers.memory import rss_mb
from tests.helpers.photos import encode, photo

KEY = "benchmark-key-5b3e"


async def made_up(url: str, n: int, header: str) -> Counter[int]:
    """`n` predictions, each with a new made-up credential in `header`; status counts."""
    body = encode(photo(1), "PNG")
    codes: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for i in range(n):
            value = f"Bearer made-up-{i}" if header == "authorization" else f"made-up-{i}"
            res = await client.post(
                "/v1/predict", files={"file": ("a.png", body)}, headers={header: value}
            )
            codes[res.status_code] += 1
    return codes


async def big_tokens(url: str, n: int, size: int) -> Counter[int]:
    """`n` GETs of /v1/model, each with a new made-up token of `size` bytes."""
    codes: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for i in range(n):
            token = f"{i:08d}" + "t" * (size - 8)
            res = await client.get("/v1/model", headers={"Authorization": f"Bearer {token}"})
            codes[res.status_code] += 1
    return codes


def main(argv: list[str] | None = None) -> int:
    """Run the three floods and print what got through."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--burst", type=int, default=2)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--token-bytes", type=int, default=15_000)
    parser.add_argument(
        "--pythonpath", help="Serve FishEye from this source folder (compare two versions)."
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = make_bundle(Path(tmp) / "bundle")
        env = {
            "FISHEYE_RATE_LIMIT_PER_S": str(args.rate),
            "FISHEYE_RATE_LIMIT_BURST": str(args.burst),
            "FISHEYE_PREDICTION_LOG": "false",
        }
        print(f"rate limit {args.rate:g}/s, burst {args.burst}, one address\n")
        for keys, header in (("", "authorization"), (KEY, "x-api-key")):
            env_run = {**env, "FISHEYE_API_KEYS": keys}
            url, proc = start_server(model, Path(tmp) / "server.log", env_run, args.pythonpath)
            try:
                codes = asyncio.run(made_up(url, args.requests, header))
            finally:
                stop_server(proc)
            through = args.requests - codes[429]
            print(
                f"{args.requests} predictions, a new made-up {header} each "
                f"(API keys {'set' if keys else 'unset'}): {through} not throttled "
                f"{dict(sorted(codes.items()))}"
            )
        url, proc = start_server(model, Path(tmp) / "server.log", env, args.pythonpath)
        try:
            before = rss_mb(proc.pid)
            codes = asyncio.run(big_tokens(url, args.tokens, args.token_bytes))
            after = rss_mb(proc.pid)
        finally:
            stop_server(proc)
        print(
            f"{args.tokens:,} requests with distinct {args.token_bytes:,}-byte tokens: "
            f"RSS {before:.0f} -> {after:.0f} MiB ({after - before:+.0f}) "
            f"{dict(sorted(codes.items()))}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
