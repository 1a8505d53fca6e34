"""Labelled folder scanning: case-insensitive classes, subsets, clear errors."""
from __future__ import annotations

import pytest

from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.folders import parse_classes, scan_labelled


def make_tree(root, layout: dict[str, list[str]]) -> None:
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes(b"x")


def test_case_insensitive_and_subset(tmp_path) -> None:
    make_tree(tmp_path, {"normal": ["a.png", "B.JPG"], "OSTEOPENIA": ["c.jpeg"], "Osteoporosis": ["d.tif"],
                         "Osteoporosis/sub": ["e.bmp"], "notes": ["readme.txt"]})
    (tmp_path / "normal" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "normal" / "list.csv").write_bytes(b"x")
    items = scan_labelled(tmp_path, parse_classes("Normal,Osteoporosis"))
    assert [(i.path.name, i.label, i.class_name) for i in items] == [
        ("B.JPG", 0, "Normal"), ("a.png", 0, "Normal"), ("d.tif", 1, "Osteoporosis"), ("e.bmp", 1, "Osteoporosis")]
    assert [i.format for i in items] == ["jpeg", "png", "tiff", "bmp"]


def test_missing_class_and_empty_class(tmp_path) -> None:
    make_tree(tmp_path, {"Normal": ["a.png"], "Osteoporosis": []})
    with pytest.raises(KedgeError, match="no folder for class 'Osteopenia' .*found: Normal, Osteoporosis"):
        scan_labelled(tmp_path, ["Normal", "Osteopenia"])
    with pytest.raises(KedgeError, match="Osteoporosis: no images"):
        scan_labelled(tmp_path, ["Normal", "Osteoporosis"])
    with pytest.raises(KedgeError, match="no such data folder"):
        scan_labelled(tmp_path / "missing", ["Normal"])


@pytest.mark.parametrize("text,problem",
                         [("Normal,", "empty class"), ("a,A", "named twice"), ("Normal", "at least two")])
def test_parse_classes_errors(text: str, problem: str) -> None:
    with pytest.raises(KedgeError, match=problem):
        parse_classes(text)
