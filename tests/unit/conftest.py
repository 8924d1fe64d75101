"""Unit-test fixtures: a tiny bundle with its ONNX forms exported."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.bundles import copy_bundle, int8_first, make_exported_bundle


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """The synthetic-class tiny bundle with onnx and onnx-int8 exported (read-only)."""
    return make_exported_bundle(tmp_path_factory.mktemp("exported") / "bundle", synthetic_dataset)


@pytest.fixture
def writable_exported_bundle(exported_bundle: Path, tmp_path: Path) -> Path:
    """A fresh copy of `exported_bundle` that the test may change."""
    return copy_bundle(exported_bundle, tmp_path / "writable-exported-bundle")


@pytest.fixture
def int8_bundle(writable_exported_bundle: Path) -> Path:
    """A writable exported bundle whose recorded figures make int8 `auto`'s first choice."""
    int8_first(writable_exported_bundle)
    return writable_exported_bundle
