"""False alarms and detection delays of the server's repeated drift tests, on simulated streams.

    python -m benchmarks.drift_stream --model models/default

Replays what the server does with the server's own `DriftWindow` (docs/monitoring.md): a
window of the last --window photos, tested every --every photos, each test at level
alpha = (false alarms per photo) x (photos not yet spent), with the class-mix test beside
the MMD test. Features and
predicted classes come from the served backend, extracted once per photo (cached in
--cache); the streams are then drawn from them:

- healthy: val photos (fish-256/val) in random order, no photo twice within a window;
  --healthy-tests tests per schedule. Prints false alarms per 10,000 photos against the
  budget, and what a fixed alpha of 0.01 on the MMD test alone (the old server) gives.
- switches: --switches streams that run healthy for a full window, then switch (at a
  random point of the test schedule) to web photos of other fish (web-fish-ood),
  corrupted val photos (TorchDrift's gaussian_noise / gaussian_blur, severity 3; needs
  the dev extra), or a label shift (val photos of only 3 of the 9 classes). Prints the
  delay until the first alarm, in photos after the switch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from fisheye.data.files import collect_image_paths
from fisheye.inference.backends import AUTO, NAMES
from fisheye.monitoring.drift import DriftDetector
from fisheye.monitoring.fitting import extract_features
from fisheye.monitoring.loading import load_model
from fisheye.serving.drift_window import DriftWindow

log = logging.getLogger("drift_stream")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def features(predictor, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Features and predicted class indices of photos."""
    f = extract_features(predictor, [(p, None) for p in paths])
    return f.features, f.probabilities.argmax(axis=1)


def corrupted(predictor, paths: list[Path], kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and predicted classes of photos corrupted at severity 3 (TorchDrift)."""
    import torch
    from torchdrift.data import functional as corruptions

    from fisheye.data.preprocess import normalize, resize_image, to_chw_uint8

    spec = predictor.preprocessing
    torch.manual_seed(seed)
    feats, labels = [], []
    for i in range(0, len(paths), 64):
        chunk = paths[i : i + 64]
        pixels = np.stack([to_chw_uint8(resize_image(predictor.decode(p), spec)) for p in chunk])
        x = getattr(corruptions, kind)(torch.from_numpy(pixels).float() / 255.0, severity=3)
        out = predictor.infer(normalize((x.clamp(0, 1) * 255.0).round().numpy(), spec))
        feats.append(out.features)
        labels.append(out.probabilities.argmax(axis=1))
    return np.concatenate(feats), np.concatenate(labels)


class Stream:
    """Draws photo indices at random, never one of the last `window` again."""

    def __init__(self, pool: np.ndarray, window: int, rng: np.random.Generator) -> None:
        self.pool = pool
        self.recent: deque[int] = deque(maxlen=min(window, len(pool) - 1))
        self.rng = rng

    def next(self) -> int:
        while True:
            i = int(self.pool[self.rng.integers(len(self.pool))])
            if i not in self.recent:
                self.recent.append(i)
                return i


class Simulator:
    """The server's own `DriftWindow` (window, schedule, budget) over a stream of rows."""

    def __init__(self, detector: DriftDetector, window: int, every: int, rate: float) -> None:
        self.detector = detector
        self.window = window
        self.every = every
        self.rate = rate

    def new_window(self) -> DriftWindow:
        return DriftWindow(
            self.detector,
            size=self.window,
            every_requests=self.every,
            min_samples=self.window,
            false_alarms_per_photo=self.rate,
        )


def healthy(sim: Simulator, x: np.ndarray, y: np.ndarray, n_tests: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    stream = Stream(np.arange(len(x)), sim.window, rng)
    window = sim.new_window()
    first = [stream.next() for _ in range(sim.window - sim.every)]
    window.observe(x[first], None, y[first])
    alarms = mmd_alarms = mix_alarms = fixed = 0
    levels = []
    for _ in range(n_tests):
        idx = [stream.next() for _ in range(sim.every)]
        window.observe(x[idx], None, y[idx])
        r = window.run_test()
        assert r is not None
        alarms += r.alarm
        mmd_alarms += r.drift
        mix_alarms += r.class_mix_drift
        fixed += r.p_value < 0.01
        levels.append(r.alpha)
    photos = n_tests * sim.every
    return {
        "window": sim.window,
        "every": sim.every,
        "tests": n_tests,
        "photos": photos,
        "alpha_per_test": sorted(set(round(a, 6) for a in levels)),
        "false_alarms": alarms,
        "false_alarms_mmd": mmd_alarms,
        "false_alarms_class_mix": mix_alarms,
        "false_alarms_per_10k": round(alarms / photos * 10_000, 3),
        "fixed_alpha_0.01_mmd_alarms": fixed,
        "fixed_alpha_0.01_per_10k": round(fixed / photos * 10_000, 3),
    }


def delays(
    sim: Simulator,
    base: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    after_pool: np.ndarray,
    switches: int,
    seed: int,
    max_photos: int = 2000,
) -> dict:
    (bx, by), (ax, ay) = base, after
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(switches):
        before = Stream(np.arange(len(bx)), sim.window, rng)
        post = Stream(after_pool, sim.window, rng)
        window = sim.new_window()
        idx = [before.next() for _ in range(sim.window)]
        window.observe(bx[idx], None, by[idx])
        window.run_test()  # a healthy full window, tested (it may itself alarm: rare)
        phase = int(rng.integers(sim.every))  # where in the schedule the switch falls
        idx = [before.next() for _ in range(phase)]
        if idx:
            window.observe(bx[idx], None, by[idx])
        delay = None
        for n in range(1, max_photos + 1):
            i = post.next()
            window.observe(ax[i : i + 1], None, ay[i : i + 1])
            if (phase + n) % sim.every == 0:
                result = window.run_test()
                if result is not None and result.alarm:
                    delay = n
                    break
        found.append(delay)
    hit = [d for d in found if d is not None]
    return {
        "switches": switches,
        "detected": len(hit),
        "median_photos": float(np.median(hit)) if hit else None,
        "p90_photos": float(np.percentile(hit, 90)) if hit else None,
        "max_photos": max(hit) if hit else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--backend", default=AUTO, choices=[AUTO, *NAMES])
    parser.add_argument("--val", type=Path, default=DATA / "fish-256" / "val")
    parser.add_argument("--ood", type=Path, default=DATA / "web-fish-ood")
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--every", type=int, nargs="+", default=[200, 50])
    parser.add_argument("--false-alarms-per-10k", type=float, default=0.2)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--healthy-tests", type=int, default=2000)
    parser.add_argument("--switches", type=int, default=30)
    parser.add_argument("--no-corruptions", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fisheye-drift-stream.npz"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    start = time.perf_counter()

    predictor, monitor = load_model(args.model, backend=args.backend)
    if monitor is None:
        raise SystemExit(f"{args.model} has no drift reference; run `fisheye drift fit` first")
    detector = DriftDetector(
        monitor.drift.reference,
        monitor.drift.bandwidth,
        n_permutations=args.permutations,
        class_prior=monitor.drift.class_prior,
    )
    if detector.class_prior is None:
        log.warning("the drift reference has no class prior: no class-mix test")
    key = f"{predictor.bundle.sha256}-{predictor.backend_name}"
    cached = dict(np.load(args.cache)) if args.cache.exists() else {}
    if cached.get("key") is None or str(cached["key"]) != key:
        val_paths = collect_image_paths([args.val])
        ood_paths = collect_image_paths([args.ood])
        log.info("extracting features of %d val and %d OOD photos", len(val_paths), len(ood_paths))
        cached = {"key": np.array(key)}
        cached["val_x"], cached["val_y"] = features(predictor, val_paths)
        cached["ood_x"], cached["ood_y"] = features(predictor, ood_paths)
        if not args.no_corruptions:
            sample = [val_paths[i] for i in np.random.default_rng(0).permutation(len(val_paths))]
            for kind in ("gaussian_noise", "gaussian_blur"):
                log.info("corrupting %d val photos with %s", 400, kind)
                cached[f"{kind}_x"], cached[f"{kind}_y"] = corrupted(
                    predictor, sample[:400], kind, seed=0
                )
        np.savez(args.cache, **cached)
    val = (cached["val_x"], cached["val_y"])
    # Label shift: only the photos predicted as 3 of the classes (still studio fish photos).
    few = np.flatnonzero(np.isin(val[1], [0, 1, 2]))
    scenarios = {"web_fish_ood": ((cached["ood_x"], cached["ood_y"]), None)}
    for kind in ("gaussian_noise", "gaussian_blur"):
        if f"{kind}_x" in cached:
            scenarios[f"{kind}@3"] = ((cached[f"{kind}_x"], cached[f"{kind}_y"]), None)
    scenarios["label_shift_3_of_9_classes"] = (val, few)

    rate = args.false_alarms_per_10k / 10_000
    result = {
        "model": str(args.model),
        "backend": predictor.backend_name,
        "n_val": len(val[0]),
        "false_alarms_per_10k_budget": args.false_alarms_per_10k,
        "permutations": args.permutations,
        "healthy": [],
        "delays": {},
    }
    for every in args.every:
        sim = Simulator(detector, args.window, every, rate)
        t = time.perf_counter()
        h = healthy(sim, *val, args.healthy_tests, args.seed + every)
        h["seconds"] = round(time.perf_counter() - t, 1)
        log.info("healthy, a test every %d photos: %s", every, h)
        result["healthy"].append(h)
        delay = {}
        for name, (data, pool) in scenarios.items():
            pool = np.arange(len(data[0])) if pool is None else pool
            delay[name] = delays(sim, val, data, pool, args.switches, args.seed + 7)
            log.info("every %d, switch to %s: %s", every, name, delay[name])
        result["delays"][f"every_{every}"] = delay
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
