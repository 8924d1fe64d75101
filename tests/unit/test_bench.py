"""`fisheye bench` and `fisheye profile` run on a tiny model (figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fisheye.cli import app
from fisheye.inference.bench import bench_preprocessing, pruned_model
from fisheye.inference.export import export_onnx
from fisheye.inference.host import host_profile

runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def test_bench_json_shape(writable_synthetic_bundle: Path, synthetic_dataset: Path) -> None:
    bundle_dir = writable_synthetic_bundle
    export_onnx(bundle_dir, data=synthetic_dataset, repeats=1)
    args = ["bench", "--model", str(bundle_dir), "--data", str(synthetic_dataset), "--json"]
    args += ["--repeats", "1", "--limit", "12"]
    for b in ("torch", "torch-pruned", "onnx", "onnx-int8"):  # onnx-int8 is not exported
        args += ["--backend", b]
    result = runner.invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out["backends"]) == {"torch", "torch-pruned", "onnx"}
    for r in out["backends"].values():
        assert set(r["latency_ms"]) == {"1", "8", "32"}
        assert r["images_per_s"] > 0 and r["size_mb"] > 0
        assert 0 <= r["accuracy"] <= 1
    assert out["backends"]["torch-pruned"]["sparsity"] >= 0.29
    assert out["preprocessing"]["predictor_total_ms"] > 0
    assert out["data"]["n_images"] == 12


def test_bench_table_output(synthetic_bundle: Path, synthetic_dataset: Path) -> None:
    args = ["bench", "--model", str(synthetic_bundle), "--data", str(synthetic_dataset)]
    result = runner.invoke(app, [*args, "--repeats", "1", "--backend", "torch"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "torch" in result.stdout and "images/s" in result.stdout


def test_pruned_model_zeroes_30_percent(tiny_bundle: Path) -> None:
    from fisheye.bundle import load_bundle

    model = load_bundle(tiny_bundle).build_model()
    pruned = pruned_model(model)
    conv = pruned.backbone.features[0].weight
    assert abs(float((conv == 0).float().mean()) - 0.3) < 0.02
    assert float((model.backbone.features[0].weight == 0).float().mean()) < 0.01  # a copy


def test_preprocessing_bench_measures_both_decoders() -> None:
    from fisheye.data.preprocess import Preprocessing
    from fisheye.inference.bench import _jpeg_256

    out = bench_preprocessing(Preprocessing(input_size=224), _jpeg_256(None), repeats=2)
    assert out["jpeg"].startswith("256x256")
    for key in ("pil_decode_ms", "torchvision_decode_ms", "torchvision_resize_uint8_ms"):
        assert out[key] > 0


def test_profile_writes_traces(
    synthetic_bundle: Path, tmp_path: Path, synthetic_dataset: Path
) -> None:
    args = ["profile", "--model", str(synthetic_bundle), "--out", str(tmp_path / "prof")]
    result = runner.invoke(app, [*args, "--data", str(synthetic_dataset), "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "prof" / "inference.trace.json").stat().st_size > 0
    assert (tmp_path / "prof" / "train.trace.json").stat().st_size > 0
    assert "Self CPU" in result.stdout


def test_bench_names_the_cpu_and_checks_int8_on_it(
    exported_bundle: Path, synthetic_dataset: Path
) -> None:
    args = ["bench", "--model", str(exported_bundle), "--data", str(synthetic_dataset)]
    args += ["--repeats", "1", "--backend", "onnx-int8"]
    table = runner.invoke(app, args, env=ENV)
    assert table.exit_code == 0, table.output
    host = host_profile()
    assert f"CPU: {host.cpu or 'unknown'}, {host.machine}" in table.stdout
    assert "onnx-int8 host check: same_cpu" in table.stdout
    out = json.loads(runner.invoke(app, [*args, "--json"], env=ENV).stdout)
    assert out["machine"]["cpu"] == host.to_dict()
    assert out["backends"]["onnx-int8"]["host_check"]["status"] == "same_cpu"
