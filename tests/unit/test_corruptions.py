"""Random corruptions of training views: reproducible, bounded, and each one a real change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fisheye.data.corruptions import FAMILIES, RandomCorruption
from fisheye.data.preprocess import Preprocessing
from fisheye.data.transforms import Augmentation, RandomCorrupt, train_transform
from fisheye.training.features import CORRUPTED, VIEWS, view_transform


def _photos(n: int = 6, size: int = 32) -> np.ndarray:
    """Smooth colour gradients with a bright square: structure every corruption can damage."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        r, g, b = rng.uniform(0.2, 0.8, 3)
        img = np.stack([r * xx + 0.1, g * yy + 0.1, b * (1 - xx) + 0.1]).astype(np.float32)
        img[:, 8:16, 8:16] = 0.95
        out.append(img)
    return np.stack(out)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_changes_the_photo_and_keeps_its_shape(name):
    x = _photos(1)[0]
    out = FAMILIES[name](x, np.random.default_rng(0))
    assert out.shape == x.shape
    assert np.isfinite(out).all()
    assert np.abs(out - x).mean() > 1e-3


def test_random_corruption_is_reproducible_and_stays_in_the_normalised_range():
    spec = Preprocessing()
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    batch = (_photos() - mean) / std
    first = RandomCorruption(spec, seed=1)(batch)
    again = RandomCorruption(spec, seed=1)(batch)
    other = RandomCorruption(spec, seed=2)(batch)
    assert first.shape == batch.shape and first.dtype == batch.dtype
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    pixels = first * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert (np.abs(first - batch).reshape(len(batch), -1).mean(axis=1) > 1e-3).all()


def test_views_include_numbered_corrupted_views_and_refuse_unknown_ones():
    spec = Preprocessing()
    assert view_transform("hflip", spec) is VIEWS["hflip"]
    assert isinstance(view_transform(f"{CORRUPTED}3", spec), RandomCorruption)
    for bad in ("sideways", f"{CORRUPTED}x", CORRUPTED):
        with pytest.raises(ValueError, match="unknown view"):
            view_transform(bad, spec)


def test_training_transform_corrupts_the_configured_share_reproducibly():
    photo = torch.from_numpy(np.rint(_photos(1, 48)[0] * 255).astype(np.uint8))
    assert RandomCorrupt(0.0)(photo) is photo

    def outputs(p: float, seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        corrupt = RandomCorrupt(p)
        return [corrupt(photo) for _ in range(200)]

    always = outputs(1.0, 0)
    assert all(o.dtype == torch.uint8 and o.shape == photo.shape for o in always)
    assert all(not torch.equal(o, photo) for o in always)
    assert all(torch.equal(a, b) for a, b in zip(always, outputs(1.0, 0), strict=True))
    changed = sum(not torch.equal(o, photo) for o in outputs(0.5, 1))
    assert 70 <= changed <= 130  # binomial(200, 0.5): outside this range p < 1e-4


def test_train_transform_applies_the_configured_corruption():
    steps = train_transform(Preprocessing(input_size=32), Augmentation(corruption=0.3)).transforms
    corrupt = [s for s in steps if isinstance(s, RandomCorrupt)]
    assert len(corrupt) == 1 and corrupt[0].p == 0.3
    image = Image.fromarray(np.rint(_photos(1, 48)[0].transpose(1, 2, 0) * 255).astype(np.uint8))
    full = train_transform(Preprocessing(input_size=32), Augmentation(corruption=1.0))(image)
    assert full.shape == (3, 32, 32) and full.dtype == torch.float32
