"""Unit-test fixtures shared by the export and backend tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_helpers import exported_bundle


@pytest.fixture(scope="session")
def exported_tiny_bundle(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """A tiny small_cnn bundle with onnx and onnx-int8 exported (once per session; read-only)."""
    return exported_bundle(tmp_path_factory.mktemp("exported") / "bundle", synthetic_dataset)
