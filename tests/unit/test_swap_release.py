"""A retired model is freed when it is retired, not when the cycle collector happens to run:
after many swaps (or challenger rounds) only the live model and the one kept for rollback
are alive, and the process has no more threads than after the first swaps."""

from __future__ import annotations

import contextlib
import gc
import os
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fisheye.data.labelled import labelled_paths
from fisheye.inference.export import export_onnx
from fisheye.inference.predictor import Predictor
from fisheye.monitoring.fitting import FitOptions, fit_bundle
from fisheye.serving.app import create_app
from fisheye.serving.settings import ServeSettings
from fisheye.serving.slots import ModelSlot
from tests.helpers.bundles import make_bundle
from tests.helpers.photos import class_folders, encode, photo

TOKEN = "admin-swap-7e1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SWAPS = 12


def _onnx_monitored_bundle(out: Path, photos: Path, seed: int, name: str) -> Path:
    """A tiny bundle served by ONNX Runtime (threads of its own) with a drift reference (a
    drift window and its thread): everything a slot holds."""
    bundle = make_bundle(out, class_folders(photos), seed=seed, name=name)
    export_onnx(bundle, data=photos, repeats=1)
    predictor = Predictor.from_dir(bundle)
    items = labelled_paths(photos, predictor.classes)
    fit_bundle(predictor, items, None, FitOptions(sample=len(items), reference_size=len(items)))
    return bundle


@pytest.fixture(scope="module")
def two_bundles(
    tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("swap-release")
    return (
        _onnx_monitored_bundle(root / "a", synthetic_dataset, 0, "swap-a"),
        _onnx_monitored_bundle(root / "b", synthetic_dataset, 1, "swap-b"),
    )


@contextlib.contextmanager
def _no_cycle_collector() -> Iterator[None]:
    """Only reference counting frees objects inside the block."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def client(tmp_path: Path, two_bundles: tuple[Path, Path]) -> Iterator[TestClient]:
    settings = ServeSettings(
        model=two_bundles[0],
        backend="onnx",
        threads=2,  # ONNX Runtime starts pool threads of its own
        model_workers=1,
        admin_token=TOKEN,
        prediction_db=tmp_path / "log.db",
        drift_min_samples=2,
        drift_every_requests=1,
    )
    with TestClient(create_app(settings)) as c:
        state = c.app.state.serving  # type: ignore[attr-defined]
        state.wait_loaded(60)
        assert state.ready, state.load_error
        yield c


def _state(client: TestClient):
    return client.app.state.serving  # type: ignore[attr-defined]


def _settle(client: TestClient) -> None:
    """Wait for the retired slots to stop (the retire threads end)."""
    changes = _state(client).changes
    for thread in list(changes._retiring):  # noqa: SLF001 (waiting for them is the point)
        thread.join(60)
        assert not thread.is_alive()


def _track(slot: ModelSlot, refs: list[weakref.ref]) -> None:
    refs.append(weakref.ref(slot.predictor))
    refs.append(weakref.ref(slot.predictor.backend))
    if slot.live_monitor is not None:
        refs.append(weakref.ref(slot.live_monitor))
        assert slot.live_monitor.window is not None  # the monitor -> window -> monitor path
        refs.append(weakref.ref(slot.live_monitor.window))


def _alive(refs: list[weakref.ref]) -> set[int]:
    return {id(obj) for r in refs if (obj := r()) is not None}


def _kept(client: TestClient) -> set[int]:
    """What the server keeps on purpose: the live model, and the one kept for rollback."""
    slots = _state(client).slots
    keep: list[weakref.ref] = []
    for slot in (slots.live, slots.previous):
        if slot is not None:
            _track(slot, keep)
    return _alive(keep)


def _threads() -> int:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0


def _predict(client: TestClient, seed: int) -> None:
    res = client.post("/v1/predict", files={"file": ("a.png", encode(photo(seed), "PNG"))})
    assert res.status_code == 200, res.text


def test_swaps_free_the_retired_models_without_the_cycle_collector(
    client: TestClient, two_bundles: tuple[Path, Path]
) -> None:
    refs: list[weakref.ref] = []
    with _no_cycle_collector():
        _track(_state(client).slots.live, refs)
        threads_after_two = 0
        for i in range(SWAPS):
            _predict(client, i)  # the drift window tests and reports to its monitor
            target = two_bundles[(i + 1) % 2]
            res = client.post("/v1/admin/model", json={"model": str(target)}, headers=AUTH)
            assert res.status_code == 200, res.text
            _track(_state(client).slots.live, refs)
            _settle(client)
            if i == 1:
                threads_after_two = _threads()
        alive = _alive(refs)
        assert alive == _kept(client), "a retired model is still in memory"
        # 10 more models loaded and retired: no thread of theirs is left.
        assert _threads() <= threads_after_two + 2


def test_challenger_rounds_and_rollbacks_free_what_they_replace(
    client: TestClient, two_bundles: tuple[Path, Path]
) -> None:
    """Attach a shadow challenger, let it see photos, promote it, roll back: again and again."""
    refs: list[weakref.ref] = []
    with _no_cycle_collector():
        _track(_state(client).slots.live, refs)
        for i in range(SWAPS // 2):
            body = {"model": str(two_bundles[1]), "mode": "shadow", "share": 1.0}
            res = client.post("/v1/admin/challenger", json=body, headers=AUTH)
            assert res.status_code == 200, res.text
            _track(_state(client).slots.challenger.slot, refs)
            _predict(client, i)
            _predict(client, i + 100)
            assert client.post("/v1/admin/promote", headers=AUTH).status_code == 200
            _track(_state(client).slots.live, refs)
            assert client.post("/v1/admin/rollback", headers=AUTH).status_code == 200
            _track(_state(client).slots.live, refs)
            _settle(client)
        # A challenger replaced by another, and one detached, are freed too.
        for _ in range(2):
            body = {"model": str(two_bundles[1]), "mode": "canary", "share": 0.5}
            assert client.post("/v1/admin/challenger", json=body, headers=AUTH).status_code == 200
            _track(_state(client).slots.challenger.slot, refs)
        assert client.delete("/v1/admin/challenger", headers=AUTH).status_code == 200
        _settle(client)
        assert _alive(refs) == _kept(client), "a retired model is still in memory"
