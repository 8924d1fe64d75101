"""Composite training views: the fish is cut from its tray and laid on a drawn background."""

from __future__ import annotations

import numpy as np
import pytest

from fisheye.data.composites import BACKGROUNDS, RandomComposite, composite, fish_mask
from fisheye.data.preprocess import Preprocessing
from fisheye.training.features import COMPOSITE, view_transform

SIZE = 96
TRAY = (0.15, 0.3, 0.6)  # the studio's blue tray


def _studio_photo(centre=(48, 40), axes=(14, 30), fish=(0.75, 0.6, 0.35), glare=False):
    """A warm elliptical 'fish' on a blue tray, black corners as the dataset's rotation leaves."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = TRAY
    body = ((yy - centre[0]) / axes[0]) ** 2 + ((xx - centre[1]) / axes[1]) ** 2 <= 1
    img[body] = fish
    img[(yy + xx) < 16] = 0.0  # a black corner
    if glare:  # a bright, neutral patch of lamp light on the wet tray, touching the fish
        patch = np.zeros_like(body)
        patch[56:86, 50:90] = True
        img[patch & ~body] = 0.8
    return img, body


@pytest.mark.parametrize("glare", [False, True])
def test_the_mask_is_the_fish_not_the_tray_corners_or_glare(glare):
    img, body = _studio_photo(glare=glare)
    mask = fish_mask(img)
    assert mask is not None
    overlap = (mask & body).sum() / (mask | body).sum()
    assert overlap > 0.9
    assert not mask[:6, :6].any()  # the black corner
    assert not mask[70:86, 60:90].any()  # the glare


def test_no_mask_when_nothing_but_tray_or_when_the_fish_fills_the_frame():
    tray = np.empty((SIZE, SIZE, 3), np.float32)
    tray[:] = TRAY
    assert fish_mask(tray) is None
    full, _ = _studio_photo(centre=(48, 48), axes=(90, 90))
    assert fish_mask(full) is None


@pytest.mark.parametrize("name", sorted(BACKGROUNDS))
def test_each_background_is_a_photo_sized_image_in_range(name):
    bg = BACKGROUNDS[name](SIZE, SIZE + 8, np.random.default_rng(0))
    assert bg.shape == (SIZE, SIZE + 8, 3)
    assert np.isfinite(bg).all()
    assert np.asarray(bg).std() > 0.005  # a texture, not a flat fill


def test_a_composite_moves_the_fish_off_the_blue_tray():
    img, body = _studio_photo()
    out = composite(img, np.random.default_rng(4))
    assert out is not None and out.shape == img.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    tray_left = np.all(np.abs(out - np.asarray(TRAY, np.float32)) < 0.03, axis=2)
    assert tray_left.mean() < 0.05  # the tray is gone (the studio shows it on ~70% of pixels)
    warm = (out[..., 0] - out[..., 2]) > 0.2
    assert warm.sum() > 0.1 * body.sum()  # some of the fish is there


def test_random_composite_is_reproducible_and_keeps_photos_it_cannot_cut():
    spec = Preprocessing()
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    tray = np.empty((SIZE, SIZE, 3), np.float32)
    tray[:] = TRAY
    photos = np.stack([_studio_photo()[0], _studio_photo(centre=(40, 55))[0], tray])
    batch = (photos.transpose(0, 3, 1, 2) - mean) / std
    first = RandomComposite(spec, seed=1)(batch)
    np.testing.assert_array_equal(first, RandomComposite(spec, seed=1)(batch))
    assert not np.array_equal(first, RandomComposite(spec, seed=2)(batch))
    assert first.shape == batch.shape and first.dtype == batch.dtype
    changed = np.abs(first - batch).reshape(3, -1).mean(axis=1)
    assert (changed[:2] > 0.1).all()
    # Nothing to cut out of a bare tray: kept, at most mirrored (mirroring a flat tray is a no-op).
    np.testing.assert_allclose(first[2], batch[2], atol=1e-5)


def test_numbered_composite_views_are_known_and_malformed_ones_refused():
    spec = Preprocessing()
    assert isinstance(view_transform(f"{COMPOSITE}2", spec), RandomComposite)
    for bad in (f"{COMPOSITE}x", COMPOSITE):
        with pytest.raises(ValueError, match="unknown view"):
            view_transform(bad, spec)
