"""LightningDataModule over a manifest: train/val/test datasets with shared preprocessing."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from fisheye.data.images import decode_image
from fisheye.data.manifest import ManifestRow, manifest_hash
from fisheye.data.pipelines import load_dataset_rows
from fisheye.data.preprocess import Preprocessing, preprocess
from fisheye.data.transforms import Augmentation, train_transform

log = logging.getLogger(__name__)


class PhotoDataset(Dataset):
    """Labelled photos from manifest rows; eval mode uses exactly the Predictor's transform."""

    def __init__(
        self,
        rows: list[ManifestRow],
        class_to_idx: dict[str, int],
        spec: Preprocessing,
        augment: Augmentation | None = None,
    ):
        self.rows = rows
        self.class_to_idx = class_to_idx
        self.spec = spec
        self.train_tf = train_transform(spec, augment) if augment is not None else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.rows[index]
        img = decode_image(row.path)
        if self.train_tf is not None:
            return self.train_tf(img), self.class_to_idx[row.label]
        x = torch.from_numpy(preprocess(img, self.spec))
        return x, self.class_to_idx[row.label]


def _limit_per_class(rows: list[ManifestRow], limit: int, seed: int) -> list[ManifestRow]:
    by_class: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        by_class[row.label].append(row)
    rng = random.Random(seed)
    out: list[ManifestRow] = []
    for label in sorted(by_class):
        group = by_class[label]
        out += rng.sample(group, min(limit, len(group)))
    return out


class FishDataModule(L.LightningDataModule):
    """Loads a dataset (folder or manifest), splits it leakage-aware, and serves loaders."""

    def __init__(
        self,
        root: str,
        batch_size: int = 32,
        num_workers: int = 1,
        val_fraction: float = 0.15,
        test_fraction: float = 0.0,
        seed: int = 42,
        limit_per_class: int | None = None,
        resplit: bool = False,
        preprocessing: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.limit_per_class = limit_per_class
        self.resplit = resplit
        self.spec = Preprocessing.from_dict(preprocessing) if preprocessing else Preprocessing()
        self.augment = Augmentation(**(augment or {}))
        self.rows: list[ManifestRow] = []
        self.classes: list[str] = []
        self.splits: dict[str, list[ManifestRow]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.rows:
            return
        if not self.root.exists():
            raise FileNotFoundError(
                f"data.root={self.root} does not exist. Point it at a folder of photos "
                "(class folders, or train/val/<class>) or at a manifest.csv written by "
                "`fisheye data import`."
            )
        rows = load_dataset_rows(
            self.root,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
            resplit=self.resplit,
        )
        self.classes = sorted({r.label for r in rows})
        splits: dict[str, list[ManifestRow]] = {"train": [], "val": [], "test": []}
        for row in rows:
            if row.split in splits:
                splits[row.split].append(row)
        if self.limit_per_class:
            splits = {
                k: _limit_per_class(v, self.limit_per_class, self.seed) for k, v in splits.items()
            }
        if not splits["train"] or not splits["val"]:
            raise ValueError(f"{self.root} gave no train or no val photos: {_counts(splits)}")
        self.rows = [r for v in splits.values() for r in v]
        self.splits = splits
        log.info("data: %d classes, %s", len(self.classes), _counts(splits))

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    @property
    def manifest_hash(self) -> str:
        return manifest_hash(self.rows)

    def dataset(self, split: str, train: bool = False) -> PhotoDataset:
        """The PhotoDataset for one split (augmented when train=True)."""
        augment = self.augment if train else None
        return PhotoDataset(self.splits[split], self.class_to_idx, self.spec, augment)

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        return DataLoader(
            self.dataset(split, train),
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # Dropping the ragged last batch avoids 1-image BatchNorm batches; tiny sets keep it.
            drop_last=train and len(self.splits[split]) >= 4 * self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def _counts(splits: dict[str, list[ManifestRow]]) -> str:
    return ", ".join(f"{k}={len(v)}" for k, v in splits.items())
