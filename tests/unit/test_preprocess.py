"""The NumPy evaluation transform gives exactly the tensors of the PyTorch one it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from fisheye.data.preprocess import Preprocessing, preprocess, resize_image
from fisheye.data.transforms import Normalize
from tests.helpers.photos import photo


def _torch_preprocess(img, spec: Preprocessing):
    """The PyTorch path FishEye used before: uint8 CHW tensor, then float32 arithmetic."""
    torch = pytest.importorskip("torch", reason="the comparison needs PyTorch")
    pixels = torch.from_numpy(np.array(resize_image(img, spec), dtype=np.uint8, copy=True))
    chw = pixels.permute(2, 0, 1)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1) * 255.0
    return ((chw.to(torch.float32) - mean) / std).numpy()


@pytest.mark.parametrize(
    "spec",
    [
        Preprocessing(input_size=224),
        Preprocessing(input_size=64, resize="center_crop", interpolation="bicubic"),
        Preprocessing(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.3, 0.2)),
    ],
    ids=["default", "center-crop-bicubic", "custom-stats"],
)
@pytest.mark.parametrize("seed", range(4))
def test_numpy_preprocessing_is_bit_identical_to_the_torch_path(
    spec: Preprocessing, seed: int
) -> None:
    img = photo(seed, (300 + 17 * seed, 200 + 5 * seed))
    ours = preprocess(img, spec)
    assert ours.dtype == np.float32 and ours.shape == (3, spec.input_size, spec.input_size)
    assert np.array_equal(ours, _torch_preprocess(img, spec))


def test_training_normalisation_uses_the_same_arithmetic() -> None:
    torch = pytest.importorskip("torch", reason="training needs PyTorch")
    spec = Preprocessing(input_size=48)
    img = resize_image(photo(7, (48, 48)), spec)
    chw = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    assert np.array_equal(Normalize(spec)(chw).numpy(), preprocess(img, spec))
