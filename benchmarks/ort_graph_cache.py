"""What a cache of ONNX Runtime's optimized graph would save when a session opens.

    python -m benchmarks.ort_graph_cache                  # from the repository root
    python -m benchmarks.ort_graph_cache --runs 9 --model models/default

Saves the bundle's ONNX graph as ONNX Runtime optimizes it (`optimized_model_filepath`)
at two levels, then opens a session the way the server does (`session_options`, the graph
as bytes) in a fresh process per start, for each of:

- original: the bundle's graph, optimized at load (`ORT_ENABLE_ALL`), as the server does;
- all-level cache: the graph saved after `ORT_ENABLE_ALL`, opened with the optimizations
  off (it may hold layouts for this CPU only);
- extended-level cache: the graph saved after `ORT_ENABLE_EXTENDED` (no CPU-specific
  layout), opened with `ORT_ENABLE_ALL` (the rest done at load);

alone, and while another thread of the process runs Python, as the imports do while a
cold start loads the model. It prints the median time to open the session and the largest
difference of the logits from the original's on one input (0: the same answers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fisheye.inference.onnx_backend import session_options

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh process: open one session from the graph's bytes (timed), optionally while
# a thread counts in Python, and print the time and the logits for a fixed input.
CHILD = r"""
import json, sys, threading, time
import numpy as np
import onnxruntime as ort
from fisheye.inference.onnx_backend import session_options
path, level, busy = sys.argv[1], sys.argv[2], sys.argv[3] == "busy"
data = open(path, "rb").read()
opts = session_options(2, spinning=False)
opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
stop = threading.Event()
def count():
    n = 0
    while not stop.is_set():
        n += 1
if busy:
    threading.Thread(target=count, daemon=True).start()
    time.sleep(0.05)
start = time.perf_counter()
session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
opened = time.perf_counter() - start
stop.set()
shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
x = np.random.default_rng(0).random(shape, dtype=np.float32)
logits = session.run(["logits"], {session.get_inputs()[0].name: x})[0]
print(json.dumps({"opened_ms": opened * 1000, "logits": logits.ravel().tolist()}))
"""


def save_optimized(source: Path, level: ort.GraphOptimizationLevel, out: Path) -> Path:
    """The graph as ONNX Runtime optimizes it at `level`, saved to `out`."""
    opts = session_options(2, spinning=False)
    opts.graph_optimization_level = level
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(source.read_bytes(), sess_options=opts, providers=["CPUExecutionProvider"])
    return out


def open_once(path: Path, level: str, busy: bool) -> dict:
    """One fresh process that opens a session from `path` at `level`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), level, "busy" if busy else "alone"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Save the optimized graphs, open sessions from each in turn, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--graph", default="model.int8.onnx", help="The ONNX file in --model.")
    parser.add_argument("--runs", type=int, default=7, help="Fresh processes per case.")
    args = parser.parse_args(argv)
    source = args.model / args.graph
    tmp = Path(tempfile.mkdtemp(prefix="ort-graph-cache-"))
    levels = ort.GraphOptimizationLevel
    cases = {
        "original (optimized at load)": (source, "ORT_ENABLE_ALL"),
        "all-level cache (no optimization at load)": (
            save_optimized(source, levels.ORT_ENABLE_ALL, tmp / "all.onnx"),
            "ORT_DISABLE_ALL",
        ),
        "extended-level cache (layout at load)": (
            save_optimized(source, levels.ORT_ENABLE_EXTENDED, tmp / "extended.onnx"),
            "ORT_ENABLE_ALL",
        ),
    }
    print(
        f"ONNX Runtime {ort.__version__}, {source} ({source.stat().st_size / 1e6:.1f} MB), "
        f"{args.runs} fresh processes per case, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    times: dict[str, dict[bool, list[float]]] = {name: {False: [], True: []} for name in cases}
    logits: dict[str, np.ndarray] = {}
    for _ in range(args.runs):
        for name, (path, level) in cases.items():
            for busy in (False, True):
                got = open_once(path, level, busy)
                times[name][busy].append(got["opened_ms"])
                logits.setdefault(name, np.asarray(got["logits"]))
    reference = logits["original (optimized at load)"]
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(
        "| graph | session opened, ms: median (alone) | with a Python thread busy "
        "| max abs logit difference |"
    )
    print("|---|---:|---:|---:|")
    for name in cases:
        alone = statistics.median(times[name][False])
        busy = statistics.median(times[name][True])
        diff = float(np.abs(logits[name] - reference).max())
        print(f"| {name} | {alone:.1f} | {busy:.1f} | {diff:.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
