"""Served accuracy by CPU instruction set: does a bundle's int8 hold on every x86 machine?

    python -m benchmarks.int8_by_cpu --model models/default --data ../shared/data/fish-256/val \
        [--cpu native --cpu Haswell-v4] [--backend onnx --backend onnx-int8 --backend auto]

For each CPU it runs `fisheye evaluate --json` with each backend and prints accuracy,
errors, the backend `auto` served and its host check. `native` is this machine; any other
name is a QEMU CPU model run through `qemu-x86_64 -cpu NAME` (Debian's `qemu-user`), which
hides the instruction sets that model lacks from the process, NumPy's CPUID probe and ONNX
Runtime alike: `Haswell-v4` is an AVX2 CPU without AVX-512 or VNNI, the kind on which int8
with 8-bit weights saturates. QEMU cannot emulate AVX-512, so VNNI is measured natively
where the machine has it (the table's CPU line says). Emulation runs about 30 times slower:
`--limit` evaluates an evenly spread subset.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fisheye.inference.host import host_profile

NATIVE = "native"
QEMU = "qemu-x86_64"
CPU_PROBE = (
    "import json; from fisheye.inference.host import host_profile; "
    "print(json.dumps(host_profile().to_dict()))"
)


def _prefix(cpu: str) -> list[str]:
    if cpu == NATIVE:
        return []
    if shutil.which(QEMU) is None:
        sys.exit(f"{QEMU} is not installed (apt-get install qemu-user) for --cpu {cpu}")
    return [QEMU, "-cpu", cpu]


def _run(cpu: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    command = [*_prefix(cpu), sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def cpu_profile(cpu: str) -> dict:
    """The host profile the process sees under `cpu` (emulated CPUs hide instruction sets)."""
    done = _run(cpu, ["-c", CPU_PROBE], timeout=600)
    if done.returncode != 0:
        sys.exit(f"cannot start Python on CPU {cpu}: {done.stderr[-500:]}")
    return json.loads(done.stdout)


def spread_subset(data: Path, limit: int, out: Path) -> Path:
    """A class-per-folder tree of links to `limit` photos spread evenly over `data`."""
    photos = sorted(p for p in data.rglob("*") if p.is_file())
    for photo in (photos[int(i * len(photos) / limit)] for i in range(min(limit, len(photos)))):
        link = out / photo.relative_to(data)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(photo.resolve())
    return out


def evaluate(cpu: str, model: Path, data: Path, backend: str) -> dict:
    """`fisheye evaluate --json` of one backend on one CPU, with its wall time."""
    with tempfile.TemporaryDirectory() as out:
        fisheye = str(Path(sys.executable).parent / "fisheye")
        args = [fisheye, "evaluate", "--model", str(model), "--data", str(data)]
        args += ["--backend", backend, "--out", out, "--json"]
        start = time.perf_counter()
        done = _run(cpu, args, timeout=6 * 3600)
        if done.returncode != 0:
            sys.exit(f"evaluate failed on {cpu} with {backend}: {done.stderr[-1000:]}")
        metrics = json.loads(done.stdout)
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/fish-256/val"))
    parser.add_argument("--cpu", action="append", help="native or a QEMU CPU model (repeatable)")
    parser.add_argument("--backend", action="append", help="backends to evaluate (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate a spread subset")
    args = parser.parse_args()
    cpus = args.cpu or [NATIVE, "Haswell-v4"]
    backends = args.backend or ["onnx", "onnx-int8", "auto"]
    print(f"this machine: {host_profile().summary()}")
    rows = []
    subset = tempfile.TemporaryDirectory()
    data = spread_subset(args.data, args.limit, Path(subset.name)) if args.limit else args.data
    for cpu in cpus:
        profile = cpu_profile(cpu)
        isa = " ".join(profile["isa"]) or "baseline"
        print(f"{cpu}: {profile['machine']} {isa}", flush=True)
        for backend in backends:
            m = evaluate(cpu, args.model, data, backend)
            choice = m["backend_selection"]
            checks = [f"{c['backend']} {c['status']}" for c in choice["checks"]]
            deviation = [
                f"{c['features_deviation']:.3f}/{c['limit']:.3f}"
                for c in choice["checks"]
                if c["features_deviation"] is not None
            ]
            rows.append(
                (
                    cpu,
                    isa,
                    backend,
                    choice["served"],
                    "; ".join(checks) or "-",
                    " ".join(deviation) or "-",
                    m["accuracy"],
                    m["n_errors"],
                    m["n_images"],
                    m["seconds"],
                )
            )
            print(f"  {backend}: {m['accuracy']:.4f} served by {choice['served']}", flush=True)
    print()
    print(
        "| CPU | instruction sets | --backend | served | host check | deviation/limit "
        "| accuracy | errors | photos | s |"
    )
    print("|---|---|---|---|---|---|---:|---:|---:|---:|")
    for cpu, isa, backend, served, checks, dev, acc, errors, n, secs in rows:
        print(
            f"| {cpu} | {isa} | {backend} | {served} | {checks} | {dev} | {acc:.4f} "
            f"| {errors} | {n} | {secs:.0f} |"
        )


if __name__ == "__main__":
    main()
