"""Download the Kaggle 'A Large Scale Fish Dataset'."""

from __future__ import annotations

from pathlib import Path

KAGGLE_HANDLE = "crowww/a-large-scale-fish-dataset"


class DownloadError(RuntimeError):
    """The dataset could not be downloaded; the message says what is missing and what to do."""


def download_dataset(out: Path) -> Path:
    """Download the Kaggle 'A Large Scale Fish Dataset' into `out`; returns its folder."""
    out = Path(out)
    hint = (
        "Set KAGGLE_USERNAME and KAGGLE_KEY (or put kaggle.json in ~/.kaggle/), check the "
        "network, or download https://www.kaggle.com/datasets/"
        f"{KAGGLE_HANDLE} by hand, unzip it and run `fisheye data import <folder> --out DIR`."
    )
    try:
        import kagglehub
    except ImportError as exc:  # pragma: no cover - kagglehub is a dependency
        raise DownloadError(f"kagglehub is not installed ({exc}). {hint}") from exc
    out.mkdir(parents=True, exist_ok=True)
    target = out / "a-large-scale-fish-dataset"
    try:
        path = kagglehub.dataset_download(KAGGLE_HANDLE, output_dir=str(target))
    except Exception as exc:  # noqa: BLE001 - any failure becomes one clear message
        raise DownloadError(
            f"could not download {KAGGLE_HANDLE}: {type(exc).__name__}: {exc}. {hint}"
        ) from exc
    return Path(path)
