"""Benchmark every way to run a bundle's model: latency, throughput, size, accuracy.

Backends: eager `torch`, `torch-compile` (torch.compile, inductor), `torch-pruned` (30% L1
unstructured pruning of every conv and linear weight, no fine-tuning), and the bundle's
exported `onnx` / `onnx-int8`. Plus decoding and resizing of one 256x256 JPEG on its own.
"""

from __future__ import annotations

import copy
import gc
import io
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fisheye.bundle import WEIGHTS_FILE, Bundle, load_bundle
from fisheye.data.images import decode_image
from fisheye.data.preprocess import Preprocessing, normalize, resize_image, to_chw_uint8
from fisheye.inference import backends
from fisheye.inference.backend import Backend, default_threads
from fisheye.inference.host import host_profile
from fisheye.inference.host_check import verify
from fisheye.inference.measure import (
    DEFAULT_VAL,
    LabelledSet,
    backend_accuracy,
    example_batch,
    load_labelled_set,
    median_ms,
)
from fisheye.inference.options import RuntimeOptions
from fisheye.inference.predictor import Predictor
from fisheye.inference.torch_backend import TorchBackend

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 8, 32)
TORCH = "torch"
# Variants of eager PyTorch that bench measures besides the registry's backends.
TORCH_COMPILE = "torch-compile"
TORCH_PRUNED = "torch-pruned"
ALL_BACKENDS = (*backends.NAMES, TORCH_COMPILE, TORCH_PRUNED)
PRUNE_AMOUNT = 0.3
MB = 1024 * 1024


def pruned_model(model: torch.nn.Module, amount: float = PRUNE_AMOUNT) -> torch.nn.Module:
    """A copy with `amount` of each conv/linear weight zeroed by L1 magnitude (no fine-tune)."""
    from torch.nn.utils import prune

    pruned = copy.deepcopy(model).eval()
    for module in pruned.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            prune.l1_unstructured(module, "weight", amount=amount)
            prune.remove(module, "weight")
    return pruned


class CompiledModel(torch.nn.Module):
    """A model whose feature extractor runs through torch.compile (inductor); same head."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        self._features = torch.compile(model.forward_features, dynamic=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.head(features)


def _sparsity(model: torch.nn.Module) -> float:
    total = zeros = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            total += module.weight.numel()
            zeros += int((module.weight == 0).sum())
    return zeros / max(total, 1)


def _build(bundle: Bundle, name: str, threads: int) -> tuple[Backend, dict[str, Any]]:
    """The backend to measure and what to report about it besides timings."""
    weights_mb = (bundle.path / WEIGHTS_FILE).stat().st_size / MB
    if name == TORCH:
        return TorchBackend(bundle.build_model(), temperature=bundle.temperature), {
            "size_mb": weights_mb
        }
    if name == TORCH_PRUNED:
        model = pruned_model(bundle.build_model())
        info = {
            "size_mb": weights_mb,
            "note": f"{PRUNE_AMOUNT:.0%} L1 unstructured, no fine-tune; dense storage",
            "sparsity": round(_sparsity(model), 4),
        }
        return TorchBackend(model, name=TORCH_PRUNED, temperature=bundle.temperature), info
    if name == TORCH_COMPILE:
        compiled = CompiledModel(bundle.build_model())
        return TorchBackend(compiled, TORCH_COMPILE, temperature=bundle.temperature), {
            "size_mb": weights_mb
        }
    file_name = backends.export_file(bundle.meta, name) or ""
    backend = backends.create_backend(bundle, name, RuntimeOptions(threads=threads))
    info: dict[str, Any] = {"size_mb": (bundle.path / file_name).stat().st_size / MB}
    if backends.spec(name).host_dependent:
        # Whether `auto` would serve it on this CPU (timings are measured either way).
        info["host_check"] = verify(bundle, name, file_name, backend).to_dict()
    return backend, info


def bench_backend(
    bundle: Bundle,
    name: str,
    *,
    evalset: LabelledSet | None,
    threads: int,
    repeats: int,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> dict[str, Any]:
    """Latency per batch size (median after warm-up), images/s, size and accuracy of a backend."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    backend, info = _build(bundle, name, threads)
    inputs = Predictor(bundle, backend=backend)
    latency: dict[str, float] = {}
    first_call_ms = None
    for n in batch_sizes:
        batch = example_batch(inputs, evalset, n)
        if first_call_ms is None:  # for torch.compile this includes the compilation
            t0 = time.perf_counter()
            backend.run(batch)
            first_call_ms = (time.perf_counter() - t0) * 1000.0
        latency[str(n)] = round(median_ms(lambda b=batch, f=backend.run: f(b), repeats=repeats), 3)
    largest = str(max(batch_sizes))
    result: dict[str, Any] = {
        "latency_ms": latency,
        "images_per_s": round(int(largest) * 1000.0 / latency[largest], 2),
        "size_mb": round(info.pop("size_mb"), 3),
        "accuracy": backend_accuracy(bundle, backend, evalset) if evalset is not None else None,
        "first_call_ms": round(first_call_ms or 0.0, 1),
        "setup_s": round(time.perf_counter() - start, 2),
        **info,
    }
    del backend
    gc.collect()
    return result


def _jpeg_256(evalset_source: Path | None) -> bytes:
    """A 256x256 JPEG: a real photo from the data when there is one, else a synthetic one."""
    if evalset_source is not None and Path(evalset_source).is_dir():
        for path in sorted(Path(evalset_source).rglob("*.jp*g")):
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                if img.size == (256, 256):
                    return data
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((256, 256), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bench_preprocessing(spec: Preprocessing, jpeg: bytes, repeats: int = 50) -> dict[str, Any]:
    """Decode + resize + normalise of one JPEG: the Predictor's path vs torchvision.io."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    size = spec.input_size
    img = decode_image(jpeg)
    resized = resize_image(img, spec)
    raw = torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)
    # torchvision.io decoding is deprecated in favour of TorchCodec, but still the fastest
    # decoder at hand; measured here for comparison only.
    warnings.filterwarnings("ignore", message=".*image decoding.*", category=DeprecationWarning)
    decoded = decode_jpeg(raw)
    timings: dict[str, Callable[[], object]] = {
        "pil_decode_ms": lambda: decode_image(jpeg),
        "pil_resize_ms": lambda: resize_image(img, spec),
        "to_array_normalize_ms": lambda: normalize(to_chw_uint8(resized), spec),
        "predictor_total_ms": lambda: normalize(
            to_chw_uint8(resize_image(decode_image(jpeg), spec)), spec
        ),
        "torchvision_decode_ms": lambda: decode_jpeg(raw),
        "torchvision_resize_uint8_ms": lambda: F.resize(decoded, [size, size], antialias=True),
        "torchvision_total_ms": lambda: F.normalize(
            F.resize(decode_jpeg(raw), [size, size], antialias=True).float() / 255.0,
            list(spec.mean),
            list(spec.std),
        ),
    }
    out: dict[str, Any] = {"jpeg": f"{img.width}x{img.height}, {len(jpeg)} bytes"}
    for key, fn in timings.items():
        out[key] = round(median_ms(fn, warmup=3, repeats=repeats), 3)
    return out


def run_bench(
    bundle_dir: Path | None = None,
    *,
    data: Path | None = None,
    limit: int | None = None,
    repeats: int = 10,
    threads: int | None = None,
    only: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    on_backend: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure each available backend and the preprocessing; the `fisheye bench --json` object."""
    bundle = load_bundle(bundle_dir)
    threads = threads or default_threads()
    wanted = list(only) if only else list(ALL_BACKENDS)
    unknown = sorted(set(wanted) - set(ALL_BACKENDS))
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {list(ALL_BACKENDS)}")
    available = [
        b for b in wanted if b not in backends.BACKENDS or backends.has_export(bundle.meta, b)
    ]
    for missing in sorted(set(wanted) - set(available)):
        log.info("%s: not exported in this bundle (fisheye export --format %s)", missing, missing)
    if data is None and DEFAULT_VAL.is_dir():
        data = DEFAULT_VAL
    evalset = None
    if data is not None:
        evalset = load_labelled_set(data, bundle.classes, limit=limit)
    results: dict[str, Any] = {}
    for name in available:
        if on_backend is not None:
            on_backend(name)
        try:
            results[name] = bench_backend(
                bundle,
                name,
                evalset=evalset,
                threads=threads,
                repeats=repeats,
                batch_sizes=batch_sizes,
            )
        except Exception as exc:  # e.g. torch.compile without a C++ compiler: report, go on
            log.warning("%s failed: %s: %s", name, type(exc).__name__, exc)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    ok = {k: v for k, v in results.items() if "latency_ms" in v}
    best = min(ok, key=lambda k: ok[k]["latency_ms"][str(min(batch_sizes))]) if ok else None
    summary: dict[str, Any] = {"fastest_batch1": best}
    if best and TORCH in ok:
        b1 = str(min(batch_sizes))
        summary["speedup_vs_torch_batch1"] = round(
            ok[TORCH]["latency_ms"][b1] / ok[best]["latency_ms"][b1], 2
        )
        if ok[best].get("accuracy") is not None and ok[TORCH].get("accuracy") is not None:
            summary["accuracy_delta_points"] = round(
                100 * (ok[best]["accuracy"] - ok[TORCH]["accuracy"]), 2
            )
    return {
        "backends": results,
        "summary": summary,
        "preprocessing": bench_preprocessing(bundle.preprocessing, _jpeg_256(data)),
        "model": {"name": bundle.name, "version": bundle.version, "path": str(bundle.path)},
        "data": {"path": str(data) if data else None, "n_images": len(evalset) if evalset else 0},
        "machine": {
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "repeats": repeats,
            "torch": torch.__version__,
            "onnxruntime": _ort_version(),
            "cpu": host_profile().to_dict(),
        },
    }


def _ort_version() -> str | None:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return None
