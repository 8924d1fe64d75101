"""Measure FishEye's drift and OOD targets on real photos (figures for docs/monitoring.md).

    python benchmarks/drift_eval.py --model models/default

Needs a bundle with a drift reference (`fisheye drift fit`). Features are extracted once per
photo through the Predictor; batches are then drawn from them at random:
- 20 batches of 50 OOD photos (web-fish-ood): fraction with p < 0.01 (target >= 95%);
- 20 batches of 50 val photos: fraction with p >= 0.05 (target >= 90%);
- per-photo OOD score: AUROC val vs OOD (target >= 0.95) and the val false-alarm rate
  (in-sample, where the threshold was calibrated, and 2-fold: calibrate on one half of val,
  measure on the other; target within 2 points of the configured rate);
- TorchDrift's gaussian_noise / gaussian_blur corruptions of val photos at severities 3 and
  5: fraction of 50-photo batches flagged as drift.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fisheye.data.files import collect_image_paths
from fisheye.data.preprocess import normalize, resize_image, to_chw_uint8
from fisheye.inference.backends import AUTO, NAMES
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.fitting import extract_features
from fisheye.monitoring.loading import load_model
from fisheye.monitoring.ood import auroc

log = logging.getLogger("drift_eval")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def features_of(predictor: Predictor, paths: list[Path]) -> np.ndarray:
    """Penultimate features of photos (one model call per batch)."""
    return extract_features(predictor, [(p, None) for p in paths]).features


def corrupted_features(
    predictor: Predictor, paths: list[Path], kind: str, severity: int, seed: int
) -> np.ndarray:
    """Features of photos corrupted by a TorchDrift corruption (applied in [0, 1] pixels)."""
    from torchdrift.data import functional as corruptions

    fn = getattr(corruptions, kind)
    spec = predictor.preprocessing
    torch.manual_seed(seed)
    pixels = np.stack([to_chw_uint8(resize_image(predictor.decode(p), spec)) for p in paths])
    x = fn(torch.from_numpy(pixels).float() / 255.0, severity=severity).clamp(0, 1)
    return predictor.infer(normalize((x * 255.0).round().numpy(), spec)).features


def batches(n_total: int, n_batches: int, size: int, seed: int) -> list[np.ndarray]:
    """Random index batches (without replacement within a batch)."""
    rng = np.random.default_rng(seed)
    return [rng.choice(n_total, size=size, replace=False) for _ in range(n_batches)]


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation and print JSON (and a Markdown table on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--val", type=Path, default=DATA / "fish-256" / "val")
    parser.add_argument("--ood", type=Path, default=DATA / "web-fish-ood")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--corruption-batches", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backend",
        default=AUTO,
        choices=[AUTO, *NAMES],
        help="Backend extracting the features (auto: the one `fisheye serve` uses); the "
        "bundle's reference for that backend is used.",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    predictor, monitor = load_model(args.model, backend=args.backend)
    if monitor is None:
        raise SystemExit(f"{args.model} has no drift reference; run `fisheye drift fit` first")
    if not monitor.matches_backend:
        log.warning("no %s drift reference: figures use the %s one", args.backend, monitor.backend)
    start = time.perf_counter()
    val_paths = collect_image_paths([args.val])
    ood_paths = collect_image_paths([args.ood])
    log.info("extracting features: %d val, %d OOD photos", len(val_paths), len(ood_paths))
    val = features_of(predictor, val_paths)
    ood = features_of(predictor, ood_paths)
    size = args.batch_size

    def p_values(x: np.ndarray, seed: int) -> list[float]:
        out = []
        for i, idx in enumerate(batches(len(x), args.batches, size, seed)):
            out.append(monitor.drift.test(x[idx], seed=seed * 1000 + i).p_value)
        return out

    p_ood = p_values(ood, args.seed + 1)
    p_val = p_values(val, args.seed + 2)

    s_val, s_ood = monitor.ood.score(val), monitor.ood.score(ood)
    rate = monitor.ood.false_alarm_rate
    halves = np.random.default_rng(args.seed).permutation(len(val))
    a, b = halves[: len(val) // 2], halves[len(val) // 2 :]
    two_fold = []
    for fit_idx, test_idx in ((a, b), (b, a)):
        thr = float(np.quantile(s_val[fit_idx], 1 - rate, method="higher"))
        two_fold.append(float(np.mean(s_val[test_idx] > thr)))

    corruption: dict[str, float] = {}
    rng = random.Random(args.seed)
    for kind in ("gaussian_noise", "gaussian_blur"):
        for severity in (3, 5):
            flagged = 0
            for i in range(args.corruption_batches):
                chosen = rng.sample(val_paths, size)
                feats = corrupted_features(predictor, chosen, kind, severity, seed=i)
                flagged += monitor.drift.test(feats, seed=i).drift
            corruption[f"{kind}@{severity}"] = flagged / args.corruption_batches

    result = {
        "model": str(args.model),
        "model_version": predictor.bundle.version,
        "backend": predictor.backend_name,
        "reference_backend": monitor.backend,
        "n_val": len(val),
        "n_ood": len(ood),
        "batch_size": size,
        "batches": args.batches,
        "n_permutations": monitor.drift.n_permutations,
        "ood_batches_p_below_0.01": float(np.mean(np.array(p_ood) < 0.01)),
        "val_batches_p_at_least_0.05": float(np.mean(np.array(p_val) >= 0.05)),
        "ood_batch_p_values_max": float(max(p_ood)),
        "val_batch_p_values_min": float(min(p_val)),
        "ood_auroc": auroc(s_val, s_ood),
        "ood_threshold": monitor.ood.threshold,
        "configured_false_alarm_rate": rate,
        "val_false_alarm_rate_in_sample": float(np.mean(s_val > monitor.ood.threshold)),
        "val_false_alarm_rate_2fold": float(np.mean(two_fold)),
        "ood_photos_flagged": float(np.mean(s_ood > monitor.ood.threshold)),
        "corruption_batches_flagged": corruption,
        "corruption_batches": args.corruption_batches,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
