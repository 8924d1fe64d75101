"""Training throughput: images/s for decode + augment, and for one optimiser step.

    .venv/bin/python benchmarks/train_throughput.py [--data ../shared/data/fish-256/train]
        [--archs efficientnet_lite0 mobilenet_v3_small resnet18 small_cnn] [--sizes 160 224]

Uses real photos from --data (default: the shared train split); prints a table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fisheye.data.images import decode_image, is_image_path
from fisheye.data.preprocess import Preprocessing
from fisheye.data.transforms import Augmentation, train_transform
from fisheye.models.backbones import BACKBONES, build_model

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fish-256" / "train"


def photos(root: Path, n: int, seed: int = 0) -> list[Path]:
    """A seeded sample of n photo paths under root."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_path(p))
    if not files:
        raise SystemExit(f"no photos under {root}")
    return random.Random(seed).sample(files, min(n, len(files)))


def decode_augment_rate(files: list[Path], size: int) -> float:
    """Images/s for decode + training augmentation on one core."""
    tf = train_transform(Preprocessing(input_size=size), Augmentation())
    tf(decode_image(files[0]))  # warm-up: the first call pays for lazy initialisation
    start = time.perf_counter()
    for f in files:
        tf(decode_image(f))
    return len(files) / (time.perf_counter() - start)


def train_step_rate(arch: str, size: int, batch: int, steps: int) -> float:
    """Median images/s of a forward + backward + AdamW step on random input."""
    model = build_model(arch, 9, pretrained=False, input_size=size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 9, (batch,))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:  # the first step is warm-up
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--archs", nargs="+", default=sorted(BACKBONES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[160, 224])
    parser.add_argument("--images", type=int, default=200, help="photos for decode + augment")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    console = Console()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data {args.data}")
    files = photos(args.data, args.images)
    table = Table("stage", "arch", "input", "images/s")
    for size in args.sizes:
        table.add_row("decode+augment", "-", str(size), f"{decode_augment_rate(files, size):.1f}")
    for arch in args.archs:
        for size in args.sizes:
            rate = train_step_rate(arch, size, args.batch, args.steps)
            table.add_row("train step", arch, str(size), f"{rate:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
