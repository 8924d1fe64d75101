"""`fisheye evaluate` and evaluate_bundle on a tiny synthetic folder with a tiny bundle."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from fisheye.data.labelled import LabelledDataError, load_labelled
from fisheye.data.manifest import ManifestRow, write_manifest
from fisheye.evaluate import EvaluationError, classification_scores, evaluate_bundle
from fisheye.inference.predictor import Predictor
from tests.helpers.bombs import dds_named_jpg
from tests.helpers.bundles import TINY_NAME
from tests.helpers.paths import FISH_CLASSES as CLASSES
from tests.helpers.photos import write_bad_files, write_photo

runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PER_CLASS = 4  # photos per class in `data_dir`


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "fish"
    seed = 0
    for cls in CLASSES:
        for i in range(PER_CLASS):
            write_photo(root / cls / f"{i}.jpg", seed, size=(40 + 3 * i, 36))
            seed += 1
    return root


def _invoke(*args: str):
    from fisheye.cli import app

    return runner.invoke(app, ["evaluate", *args], env=ENV)


def _check_outputs(metrics: dict, out: Path, n_images: int) -> None:
    assert set(metrics) >= {
        "accuracy",
        "macro_f1",
        "n_images",
        "n_unreadable",
        "per_class",
        "bundle",
        "data",
        "unreadable",
    }
    assert isinstance(metrics["accuracy"], float) and 0.0 <= metrics["accuracy"] <= 1.0
    assert isinstance(metrics["macro_f1"], float) and 0.0 <= metrics["macro_f1"] <= 1.0
    assert metrics["n_images"] == n_images
    assert isinstance(metrics["n_unreadable"], int)
    assert set(metrics["per_class"]) == set(CLASSES)
    for m in metrics["per_class"].values():
        assert set(m) == {"precision", "recall", "f1", "support"}
        assert isinstance(m["support"], int)
        assert all(isinstance(m[k], float) for k in ("precision", "recall", "f1"))
    assert sum(m["support"] for m in metrics["per_class"].values()) == n_images
    assert metrics["bundle"]["name"] == TINY_NAME and metrics["bundle"]["version"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC
    with open(out / "errors.csv", newline="") as f:
        errors = list(csv.DictReader(f))
    wrong = round(n_images * (1 - metrics["accuracy"]))
    assert len(errors) == wrong == metrics["n_errors"]
    for e in errors:
        assert set(e) == {"path", "true", "predicted", "confidence"}
        assert e["true"] != e["predicted"]
    matrix = metrics["confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == n_images
    assert n_images - sum(matrix[i][i] for i in range(len(CLASSES))) == wrong
    _check_plot_tables(metrics, out)


def _check_plot_tables(metrics: dict, out: Path) -> None:
    """confusion.csv and per_class.csv (what `dvc plots` draws) agree with metrics.json."""
    with open(out / "confusion.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["actual", "predicted"]
        pairs = [(r["actual"], r["predicted"]) for r in reader]
    labels = metrics["confusion_matrix"]["labels"]
    counted = [[0] * len(labels) for _ in labels]
    for actual, predicted in pairs:
        counted[labels.index(actual)][labels.index(predicted)] += 1
    assert counted == metrics["confusion_matrix"]["matrix"]
    with open(out / "per_class.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["class", "precision", "recall", "f1", "support"]
        rows = list(reader)
    assert [r["class"] for r in rows] == list(metrics["per_class"])
    for r in rows:
        m = metrics["per_class"][r["class"]]
        assert int(r["support"]) == m["support"]
        for key in ("precision", "recall", "f1"):
            assert float(r[key]) == pytest.approx(m[key], abs=1e-6)


def test_evaluate_bundle_matches_predictor(tiny_bundle: Path, data_dir: Path, tmp_path) -> None:
    predictor = Predictor.from_dir(tiny_bundle)
    rows = [SimpleNamespace(path=p, label=p.parent.name) for p in sorted(data_dir.rglob("*.jpg"))]
    metrics = evaluate_bundle(predictor, rows, tmp_path / "out", batch_size=5)
    _check_outputs(metrics, tmp_path / "out", len(rows))
    preds = {r.path: r.prediction.label for r in predictor.predict_files([r.path for r in rows])}
    correct = sum(preds[r.path] == r.label for r in rows)
    assert metrics["accuracy"] == pytest.approx(correct / len(rows))


def test_unreadable_counted_not_fatal(tiny_bundle: Path, data_dir: Path, tmp_path) -> None:
    predictor = Predictor.from_dir(tiny_bundle)
    bad = write_bad_files(tmp_path / "bad")
    rows = [SimpleNamespace(path=p, label=CLASSES[0]) for p in bad.values()]
    rows += [SimpleNamespace(path=p, label=p.parent.name) for p in sorted(data_dir.rglob("*.jpg"))]
    metrics = evaluate_bundle(
        predictor, rows, tmp_path / "out", unreadable=[(tmp_path / "x.jpg", "empty file")]
    )
    assert metrics["n_unreadable"] == 4
    assert {Path(u["path"]) for u in metrics["unreadable"]} == {*bad.values(), tmp_path / "x.jpg"}
    assert metrics["n_images"] == len(rows) - 3


def test_unknown_classes_rejected(tiny_bundle: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_dir(tiny_bundle)
    path = write_photo(tmp_path / "Catfish" / "0.jpg", 0)
    rows = [SimpleNamespace(path=path, label="Catfish")]
    with pytest.raises(EvaluationError, match="Catfish"):
        evaluate_bundle(predictor, rows, tmp_path / "out")


def test_cli_folder(tiny_bundle: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _invoke("--data", str(data_dir), "--model", str(tiny_bundle), "--out", str(out))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    _check_outputs(metrics, out, len(CLASSES) * PER_CLASS)
    assert metrics["data"]["path"] == str(data_dir.resolve())
    assert "accuracy" in result.stdout and "Hourse Mackerel" in result.stdout


def test_cli_json_prints_only_metrics(tiny_bundle: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _invoke(
        "--data", str(data_dir), "--model", str(tiny_bundle), "--out", str(out), "--json"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics == json.loads((out / "metrics.json").read_text())
    _check_outputs(metrics, out, len(CLASSES) * PER_CLASS)


def test_cli_default_out_dir(
    tiny_bundle: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = _invoke("--data", str(data_dir), "--model", str(tiny_bundle), "--json")
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs" / "evaluate").iterdir()
    assert (run / "metrics.json").is_file()


def test_cli_unknown_class_folder(tiny_bundle: Path, data_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for cls in ("Trout", "Catfish", "Pike"):
        write_photo(data / cls / "0.jpg", 1)
    result = _invoke("--data", str(data), "--model", str(tiny_bundle), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "'Catfish', 'Pike'" in result.stderr and "Sea Bass" in result.stderr
    assert "Traceback" not in result.output


def test_cli_manifest_splits(tiny_bundle: Path, data_dir: Path, tmp_path: Path) -> None:
    files = sorted(data_dir.rglob("*.jpg"))
    rows = [
        ManifestRow(p, p.parent.name, "val" if i % 3 == 0 else "train", "0" * 64, 1, 1)
        for i, p in enumerate(files)
    ]
    manifest = tmp_path / "manifest.csv"
    write_manifest(rows, manifest)
    n_val = sum(r.split == "val" for r in rows)

    args = ("--data", str(manifest), "--model", str(tiny_bundle), "--json")
    result = _invoke(*args, "--out", str(tmp_path / "val"))
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_images"] == n_val and metrics["data"]["split"] == "val"

    result = _invoke(*args, "--out", str(tmp_path / "all"), "--split", "all")
    assert json.loads(result.stdout)["n_images"] == len(files)

    result = _invoke(*args, "--out", str(tmp_path / "test"), "--split", "test")
    assert result.exit_code == 2 and "available splits" in result.stderr


def test_cli_presplit_folder_with_unreadable(tiny_bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for split in ("train", "val"):
        for j, cls in enumerate(CLASSES):
            write_photo(root / split / cls / "0.jpg", j)
    write_bad_files(root / "val" / "Trout")
    write_bad_files(root / "train" / "Trout")
    result = _invoke(
        "--data", str(root), "--model", str(tiny_bundle), "--out", str(tmp_path / "o"), "--json"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_images"] == len(CLASSES)
    assert metrics["n_unreadable"] == 3
    assert all("/val/" in u["path"] for u in metrics["unreadable"])
    assert "could not be read" in result.stderr


def test_load_labelled_errors(tmp_path: Path) -> None:
    with pytest.raises(LabelledDataError, match="no such file"):
        load_labelled(tmp_path / "missing")


def test_cli_missing_data(tiny_bundle: Path, tmp_path: Path) -> None:
    result = _invoke("--data", str(tmp_path / "missing"), "--model", str(tiny_bundle))
    assert result.exit_code == 2 and "no such file or folder" in result.stderr


def test_evaluate_counts_a_dds_file_as_unreadable(
    tiny_bundle: Path, data_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "fish"
    shutil.copytree(data_dir, data)
    (data / CLASSES[0] / "fish.jpg").write_bytes(dds_named_jpg())
    result = _invoke(
        "--data", str(data), "--model", str(tiny_bundle), "--json", "--out", str(tmp_path / "out")
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_unreadable"] == 1 and metrics["n_images"] == len(CLASSES) * PER_CLASS
    assert metrics["unreadable"][0]["path"].endswith("fish.jpg")


@pytest.mark.parametrize("seed", range(5))
def test_scores_equal_scikit_learns(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics", reason="the comparison needs scikit-learn")
    rng = np.random.default_rng(seed)
    n = 6
    y_true = rng.integers(0, n - 1, 200)  # the last class never occurs in the labels
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, n, 200))
    ours = classification_scores(y_true, y_pred, n)
    p, r, f, s = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n)), zero_division=0
    )
    assert np.allclose(ours["precision"], p) and np.allclose(ours["recall"], r)
    assert np.allclose(ours["f1"], f) and np.array_equal(ours["support"], s)
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred))
    assert ours["macro_f1"] == pytest.approx(
        metrics.f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    expected = metrics.confusion_matrix(y_true, y_pred, labels=list(range(n)))
    assert np.array_equal(ours["matrix"], expected)
