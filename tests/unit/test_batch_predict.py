"""`fisheye predict --out`: streamed results, every format, resume after a kill, exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fisheye.cli import app
from fisheye.data.files import collect_image_paths
from fisheye.inference.results import (
    COLUMNS,
    ResultsError,
    ResultWriter,
    path_text,
    read_results,
    result_format,
)
from tests.helpers.paths import FISH_CLASSES as CLASSES
from tests.helpers.photos import write_bad_files, write_photo
from tests.helpers.server import fisheye_command

runner = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def _row(path: str, label: str | None = "Trout", error: str | None = None) -> dict:
    row = dict.fromkeys(COLUMNS)
    row["path"] = path
    if error is None:
        row.update(label=label, confidence=0.5, top_k=[{"label": label, "probability": 0.5}])
    else:
        row["error"] = error
    return row


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, list[Path], dict[str, Path]]:
    folder = tmp_path / "photos"
    good = [write_photo(folder / f"fish-{i:02d}.jpg", i) for i in range(10)]
    return folder, good, write_bad_files(folder)


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_rows_round_trip_in_every_format(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    rows = [_row("a b,c.jpg"), _row('quote".jpg', error="not a recognised image")]
    rows[0]["ood_score"], rows[0]["in_distribution"] = 3.25, False
    with ResultWriter(out, rows_per_part=1) as writer:
        writer.write(rows)
    assert list(read_results(out)) == rows
    if name.endswith(".parquet"):
        assert sorted(os.listdir(out)) == ["part-000000.parquet", "part-000001.parquet"]


def test_the_name_chooses_the_format(tmp_path: Path) -> None:
    assert result_format("s3://bucket/preds.PARQUET") == "parquet"
    assert result_format(tmp_path / "x.jsonl") == "jsonl"
    with pytest.raises(ResultsError, match="must end in"):
        ResultWriter(tmp_path / "preds.txt")


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_an_existing_output_is_refused_without_resume(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    with ResultWriter(out) as writer:
        writer.write([_row("a.jpg")])
    with pytest.raises(ResultsError, match="--resume"):
        ResultWriter(out)
    assert [r["path"] for r in read_results(out)] == ["a.jpg"]


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_resume_drops_a_row_cut_short(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    with ResultWriter(out) as writer:
        writer.write([_row("a.jpg"), _row("b.jpg")])
    with out.open("ab") as fh:
        fh.write(b"c.jpg,Tro")  # what a kill in the middle of a write leaves
    with ResultWriter(out, resume=True) as writer:
        assert writer.done == {"a.jpg", "b.jpg"}
        writer.write([_row("c.jpg")])
    assert [r["path"] for r in read_results(out)] == ["a.jpg", "b.jpg", "c.jpg"]


def test_resume_of_parts_skips_half_written_ones(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with ResultWriter(out, rows_per_part=2) as writer:
        writer.write([_row("a.jpg"), _row("b.jpg"), _row("c.jpg")])
    (out / ".part-000002.parquet.tmp").write_bytes(b"PAR1 cut short")
    with ResultWriter(out, resume=True, rows_per_part=2) as writer:
        assert writer.done == {"a.jpg", "b.jpg", "c.jpg"}
        writer.write([_row("d.jpg")])
    assert sorted(os.listdir(out)) == [f"part-00000{i}.parquet" for i in range(3)]
    assert [r["path"] for r in read_results(out)] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


def test_resume_refuses_a_file_that_is_not_results(tmp_path: Path) -> None:
    out = tmp_path / "notes.csv"
    out.write_text("name,age\nfin,3\n")
    with pytest.raises(ResultsError, match="no `path` column"):
        ResultWriter(out, resume=True)
    assert out.read_text() == "name,age\nfin,3\n"  # nothing lost


@pytest.mark.parametrize("name", ["preds.csv", "preds.jsonl", "preds.parquet"])
def test_predict_out_writes_every_photo_with_error_rows(
    tiny_bundle: Path, photos, tmp_path: Path, name: str
) -> None:
    folder, good, bad = photos
    out = tmp_path / name
    args = ["predict", str(folder), "-m", str(tiny_bundle), "--out", str(out)]
    result = runner.invoke(app, [*args, "--batch-size", "4", "--rows-per-part", "3"], env=ENV)
    assert result.exit_code == 1, result.output  # some files could not be read
    assert f"wrote {len(good) + len(bad)} rows" in result.stderr
    rows = {Path(r["path"]).name: r for r in read_results(out)}
    assert set(rows) == {p.name for p in [*good, *bad.values()]}
    assert all(rows[p.name]["label"] in CLASSES and not rows[p.name]["error"] for p in good)
    assert all(rows[p.name]["error"] and rows[p.name]["label"] is None for p in bad.values())

    again = runner.invoke(app, args, env=ENV)
    assert again.exit_code == 2 and "--resume" in again.stderr
    resumed = runner.invoke(app, [*args, "--resume"], env=ENV)
    assert resumed.exit_code == 0, resumed.output
    assert "wrote 0 rows" in resumed.stderr and f"({len(rows)} already there)" in resumed.stderr


def test_out_matches_the_json_output(tiny_bundle: Path, photos, tmp_path: Path) -> None:
    folder, good, _ = photos
    out = tmp_path / "preds.jsonl"
    paths = [str(p) for p in good]
    runner.invoke(app, ["predict", *paths, "-m", str(tiny_bundle), "--out", str(out)], env=ENV)
    printed = runner.invoke(app, ["predict", *paths, "-m", str(tiny_bundle), "-f", "json"], env=ENV)
    expected = {r["path"]: (r["label"], r["confidence"]) for r in json.loads(printed.stdout)}
    assert {r["path"]: (r["label"], r["confidence"]) for r in read_results(out)} == expected


def test_engine_ray_and_resume_need_out(tiny_bundle: Path, photos) -> None:
    folder, _, _ = photos
    for extra in (["--engine", "ray"], ["--resume"]):
        result = runner.invoke(app, ["predict", str(folder), "-m", str(tiny_bundle), *extra])
        assert result.exit_code == 2 and "--out" in result.stderr


def test_an_unknown_output_format_is_refused_up_front(tmp_path: Path, photos) -> None:
    folder, _, _ = photos
    out = tmp_path / "preds.xlsx"
    result = runner.invoke(app, ["predict", str(folder), "-m", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "must end in .csv, .jsonl, .parquet" in result.stderr
    assert not out.exists()


def test_a_run_that_writes_nothing_leaves_a_reusable_file(tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    ResultWriter(out).close()  # e.g. the Ray cluster could not be reached
    with ResultWriter(out) as writer:  # no --resume needed: nothing was written
        writer.write([_row("a.jpg")])
    assert [r["path"] for r in read_results(out)] == ["a.jpg"]
    assert out.read_text().splitlines()[0] == ",".join(COLUMNS)


def _rows_in(out: Path) -> int:
    if out.is_dir():
        return sum(1 for _ in read_results(out))
    return out.read_bytes().count(b"\n") if out.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["preds.jsonl", "preds.parquet"])
def test_a_run_killed_halfway_resumes_with_every_photo_once(
    tiny_bundle: Path, synthetic_dataset: Path, tmp_path: Path, name: str
) -> None:
    # The synthetic set's photos, linked ten times each (360 photos).
    root = tmp_path / "many"
    sources = sorted(p for p in synthetic_dataset.rglob("*") if p.is_file())
    for i in range(10):
        (root / f"copy-{i}").mkdir(parents=True)
        for j, source in enumerate(sources):
            (root / f"copy-{i}" / f"{j:03d}{source.suffix}").symlink_to(source)
    total = len(collect_image_paths([root]))
    out = tmp_path / name
    cmd = fisheye_command("predict", str(root), "-m", str(tiny_bundle))
    cmd += ["--out", str(out), "--batch-size", "2", "--rows-per-part", "10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _rows_in(out) < 30 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    written = _rows_in(out)
    assert 0 < written < total  # killed halfway

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    counts = Counter(r["path"] for r in read_results(out))
    assert len(counts) == total and set(counts.values()) == {1}
    assert f"wrote {total - written} rows" in resumed.stderr
    assert f"({written} already there)" in resumed.stderr


def test_ray_engine_steps_give_the_local_rows(tiny_bundle: Path, photos) -> None:
    """The Ray engine's task and actor code, run here without Ray (its tests run a real one)."""
    pytest.importorskip("ray", reason="needs the scale extra (ray[data])")
    import functools

    import numpy as np

    from fisheye.inference.batch import local_batches
    from fisheye.inference.ray_engine import PredictActor, bundle_files, prepare_batch
    from fisheye.monitoring.loading import load_predictor

    folder, good, bad = photos
    files = [*good[:3], *bad.values()]
    load = functools.partial(load_predictor, backend="auto", top_k=3)
    predictor = load(tiny_bundle)
    prepared = prepare_batch({"path": np.asarray([str(f) for f in files])}, predictor.preparer)
    assert prepared["pixels"].shape[0] == len(files)
    assert [bool(e) for e in prepared["error"]] == [False] * 3 + [True] * len(bad)
    actor = PredictActor(bundle_files(tiny_bundle), load, top_k=3)
    rows = [json.loads(r) for r in actor(prepared)["row"]]
    (expected,) = local_batches(predictor, files, batch_size=len(files), top_k=3)
    assert rows == json.loads(json.dumps(expected))


# Names a file system may hold: not UTF-8, line separators str.splitlines splits at, a
# carriage return, a quote, a backslash, a newline.
ODD_NAMES = [
    os.fsdecode(b"caf\xe9.jpg"),
    os.fsdecode(b"\xff\xfe-fish.jpg"),
    "line\u2028sep.jpg",
    "next\x85line.jpg",
    'carriage\rreturn "quoted".jpg',
    "back\\slash.jpg",
    "new\nline.jpg",
]


def test_path_text_escapes_only_what_is_not_text() -> None:
    assert path_text("plain/fish.jpg") == "plain/fish.jpg"
    assert path_text(Path("a/b.jpg")) == "a/b.jpg"
    assert path_text(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert path_text("back\\slash") == "back\\\\slash"
    # A literal backslash-x name and an undecodable byte stay apart.
    assert path_text("caf\\xe9.jpg") != path_text(os.fsdecode(b"caf\xe9.jpg"))
    assert path_text("line\u2028sep") == "line\u2028sep"


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl", "out.parquet"])
def test_any_file_name_is_written_and_recognised_on_resume(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    paths = [path_text(p) for p in ODD_NAMES]
    with ResultWriter(out, rows_per_part=2) as writer:
        writer.write([_row(p) for p in paths])
    assert [r["path"] for r in read_results(out)] == paths
    resumed = ResultWriter(out, resume=True)
    assert resumed.done == set(paths)
    resumed.close()


@pytest.mark.parametrize("cut", ["inside-the-quoted-newline", "after-the-opening-quote"])
def test_resume_drops_a_csv_row_cut_inside_a_quoted_field(tmp_path: Path, cut: str) -> None:
    out = tmp_path / "out.csv"
    with ResultWriter(out) as writer:
        writer.write([_row("a.jpg")])
    whole = out.read_bytes()
    with ResultWriter(out, resume=True) as writer:
        writer.write([_row("two\nlines.jpg")])
    data = out.read_bytes()
    torn = data[len(whole) :]
    at = torn.index(b"\n") + 1 if cut == "inside-the-quoted-newline" else torn.index(b'"') + 1
    out.write_bytes(whole + torn[:at])  # killed mid-row
    with ResultWriter(out, resume=True) as writer:
        assert writer.done == {"a.jpg"}
        writer.write([_row("b.jpg"), _row("new\nline.jpg")])
    assert [r["path"] for r in read_results(out)] == ["a.jpg", "b.jpg", "new\nline.jpg"]


@pytest.mark.parametrize(
    ("name", "junk", "line"),
    [
        ("out.jsonl", b"{}\n", 2),
        ("out.jsonl", b"[1, 2]\n", 2),
        ("out.jsonl", b"null\n", 2),
        ("out.jsonl", b'"a.jpg"\n', 2),
        ("out.jsonl", b'{"path": 7}\n', 2),
        ("out.jsonl", b"\xff\xfe\n", 2),
        ("out.jsonl", b"{not json\n", 2),
        ("out.csv", b"b.jpg,Trout,not-a-number,,,,\n", 3),
        ("out.csv", b"b.jpg,Trout,0.5,{bad json,,,\n", 3),
        ("out.csv", b",Trout,0.5,,,,\n", 3),
        ("out.csv", b"\xff,Trout,0.5,,,,\n", 3),
    ],
)
def test_resume_reports_a_junk_row_with_its_file_and_line(
    tmp_path: Path, name: str, junk: bytes, line: int
) -> None:
    out = tmp_path / name
    with ResultWriter(out) as writer:
        writer.write([_row("a.jpg")])
    out.write_bytes(out.read_bytes() + junk)
    before = out.read_bytes()
    with pytest.raises(ResultsError, match=rf"{name}.*(line {line}|not UTF-8)"):
        ResultWriter(out, resume=True)
    assert out.read_bytes() == before  # nothing cut or lost


def test_predict_out_writes_a_file_whose_name_is_not_utf8(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    write_photo(folder / "plain.jpg", 1)
    odd = os.fsencode(folder) + b"/caf\xe9-\xff.jpg"
    os.rename(write_photo(folder / "tmp.jpg", 2), odd)
    for name in ("preds.csv", "preds.jsonl"):
        out = tmp_path / name
        args = ["predict", str(folder), "-m", str(tiny_bundle), "--out", str(out)]
        result = runner.invoke(app, args, env=ENV)
        assert result.exit_code == 0, result.output
        names = sorted(Path(r["path"]).name for r in read_results(out))
        assert names == ["caf\\xe9-\\xff.jpg", "plain.jpg"]
        resumed = runner.invoke(app, [*args, "--resume"], env=ENV)
        assert resumed.exit_code == 0, resumed.output
        assert "wrote 0 rows" in resumed.stderr and "(2 already there)" in resumed.stderr
    for fmt in ("json", "csv", "table"):
        shown = runner.invoke(
            app, ["predict", str(folder), "-m", str(tiny_bundle), "-f", fmt], env=ENV
        )
        assert shown.exit_code == 0, shown.output
        assert "caf\\xe9-\\xff.jpg" in shown.stdout.replace("\\\\", "\\")
