"""Profile where inference and training time goes: decoding, resizing, model ops, backward."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile, record_function

from fisheye.bundle import load_bundle
from fisheye.data.files import collect_image_paths
from fisheye.data.images import decode_image
from fisheye.data.preprocess import normalize, resize_image, to_chw_uint8
from fisheye.inference.backend import default_threads
from fisheye.inference.measure import DEFAULT_VAL, spread

log = logging.getLogger(__name__)


@dataclass
class ProfileReport:
    """Trace files written and the top-operator tables (by self CPU time)."""

    inference_trace: Path
    train_trace: Path
    inference_table: str
    train_table: str


def _photos(data: Path | None, n: int) -> list[bytes]:
    """n encoded photos: real ones from `data` (or the shared val split) if any, else synthetic."""
    folder = data if data is not None else (DEFAULT_VAL if DEFAULT_VAL.is_dir() else None)
    if folder is not None and Path(folder).is_dir():
        paths = spread(sorted(collect_image_paths([Path(folder)])), n)
        if paths:
            return [p.read_bytes() for p in paths]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        arr = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def run_profile(
    bundle_dir: Path | None = None,
    out_dir: Path = Path("runs/profile"),
    *,
    data: Path | None = None,
    batch_size: int = 8,
    threads: int | None = None,
    row_limit: int = 15,
) -> ProfileReport:
    """Profile one inference batch (decode to probabilities) and one training step."""
    bundle = load_bundle(bundle_dir)
    spec = bundle.preprocessing
    torch.set_num_threads(threads or default_threads())
    model = bundle.build_model()
    photos = _photos(data, batch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def inference() -> None:
        with record_function("decode (PIL)"):
            images = [decode_image(p) for p in photos]
        with record_function("resize (PIL, uint8)"):
            resized = [to_chw_uint8(resize_image(im, spec)) for im in images]
        with record_function("normalize (NumPy)"):
            batch = torch.from_numpy(normalize(np.stack(resized), spec))
        with record_function("model forward"), torch.inference_mode():
            torch.softmax(model.head(model.forward_features(batch)), dim=1)

    model.eval()
    inference()  # warm-up: first calls pay for lazy initialisation
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof_inf:
        inference()
    inference_trace = out_dir / "inference.trace.json"
    prof_inf.export_chrome_trace(str(inference_trace))

    images = [to_chw_uint8(resize_image(decode_image(p), spec)) for p in photos]
    x = torch.from_numpy(normalize(np.stack(images), spec))
    y = torch.arange(len(images)) % len(bundle.classes)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def train_step() -> None:
        with record_function("forward"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        with record_function("backward"):
            optimizer.zero_grad()
            loss.backward()
        with record_function("optimizer step"):
            optimizer.step()

    train_step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof_train:
        train_step()
    train_trace = out_dir / "train.trace.json"
    prof_train.export_chrome_trace(str(train_trace))
    sort = "self_cpu_time_total"
    return ProfileReport(
        inference_trace,
        train_trace,
        prof_inf.key_averages().table(sort_by=sort, row_limit=row_limit),
        prof_train.key_averages().table(sort_by=sort, row_limit=row_limit),
    )
