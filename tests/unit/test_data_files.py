"""The one photo-folder walker and the collection of photo paths named on a command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fisheye.data.files import (
    IMAGE_LIKE_SUFFIXES,
    InputPathError,
    collect_image_paths,
    is_image_like,
    walk_image_files,
)
from fisheye.data.images import IMAGE_SUFFIXES


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _touch(
        root,
        "b.jpg",
        "A.PNG",
        "notes.txt",
        "clip.gif",
        ".hidden.jpg",
        ".git/inside.jpg",
        "sub/z.jpeg",
        "sub/deeper/y.webp",
        "sub/.ipynb_checkpoints/c.jpg",
    )
    return root


def _rel(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_walk_is_recursive_sorted_and_skips_hidden(tree: Path) -> None:
    found = walk_image_files(tree)
    assert _rel(found, tree) == [
        "A.PNG",
        "b.jpg",
        "clip.gif",
        "sub/deeper/y.webp",
        "sub/z.jpeg",
    ]


def test_walk_suffix_filter_and_no_recursion(tree: Path) -> None:
    assert _rel(walk_image_files(tree, IMAGE_SUFFIXES), tree) == [
        "A.PNG",
        "b.jpg",
        "sub/deeper/y.webp",
        "sub/z.jpeg",
    ]
    assert _rel(walk_image_files(tree, IMAGE_SUFFIXES, recursive=False), tree) == [
        "A.PNG",
        "b.jpg",
    ]
    assert walk_image_files(tree, frozenset({".bmp"})) == []


def test_walk_orders_by_path_parts(tmp_path: Path) -> None:
    _touch(tmp_path, "a/z.jpg", "a.b/x.jpg", "b.jpg", "a-c.jpg")
    assert _rel(walk_image_files(tmp_path), tmp_path) == [
        "a/z.jpg",
        "a-c.jpg",
        "a.b/x.jpg",
        "b.jpg",
    ]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_walk_lists_broken_symlinks(tmp_path: Path) -> None:
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    assert walk_image_files(tmp_path) == [tmp_path / "gone.jpg"]


def test_image_like_suffixes() -> None:
    assert IMAGE_SUFFIXES <= IMAGE_LIKE_SUFFIXES
    assert is_image_like(Path("x.HEIC")) and is_image_like(Path("x.jpg"))
    assert not is_image_like(Path("x.txt"))


def test_collect_attempts_named_files_and_walks_folders(tree: Path) -> None:
    notes = tree / "notes.txt"
    hidden = tree / ".hidden.jpg"
    found = collect_image_paths([notes, str(tree / "sub"), hidden, tree / "sub" / "z.jpeg"])
    # Named files are taken whatever their name; a file already listed keeps its first place.
    assert found == [notes, tree / "sub" / "deeper" / "y.webp", tree / "sub" / "z.jpeg", hidden]


def test_collect_missing_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputPathError, match="no such file or folder"):
        collect_image_paths([tmp_path / "missing.jpg"])
    assert issubclass(InputPathError, ValueError)
