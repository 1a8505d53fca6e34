"""Duplicate detection and the seeded, stratified, group-keeping split."""
from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest

from kedge.runtime.checks.synthetic import class_density, knee_radiograph
from kedge.train.data import prepare, read_split_manifest, write_split_manifest
from kedge.train.dedup import duplicate_groups, fingerprint


def knee(seed: int, density: float = 0.6, size: int = 224) -> np.ndarray:
    return knee_radiograph(density, np.random.default_rng(seed), size)


def test_copies_resizes_and_reencodes_are_grouped(tmp_path) -> None:
    original = knee(1, size=900)
    cv2.imwrite(str(tmp_path / "a.png"), original)
    shutil.copy(tmp_path / "a.png", tmp_path / "a_copy.png")
    cv2.imwrite(str(tmp_path / "a_small.jpg"), cv2.resize(original, (224, 224), interpolation=cv2.INTER_AREA),
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    for seed in (2, 3, 4):  # different radiographs of the same class
        cv2.imwrite(str(tmp_path / f"other{seed}.png"), knee(seed))
    names = ["a.png", "a_copy.png", "a_small.jpg", "other2.png", "other3.png", "other4.png"]
    groups = duplicate_groups([fingerprint(str(tmp_path / n)) for n in names])
    assert groups == [0, 0, 0, 1, 2, 3]


def write_knees(root, name: str, seeds) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        cv2.imwrite(str(root / name / f"{seed}.png"), knee(seed, class_density(name)))


def test_prepare_groups_conflicts_and_split(tmp_path) -> None:
    root = tmp_path / "data"
    write_knees(root, "Normal", range(0, 40))
    write_knees(root, "Osteoporosis", range(100, 140))
    shutil.copy(root / "Normal" / "5.png", root / "Normal" / "5-again.png")  # exact copy, same class
    big = cv2.resize(cv2.imread(str(root / "Normal" / "6.png"), 0), (800, 800), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(root / "Normal" / "6-full.png"), big)  # the same radiograph at full size
    shutil.copy(root / "Normal" / "7.png", root / "Osteoporosis" / "7-mislabelled.png")  # conflicting labels
    (root / "Osteoporosis" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    data = prepare(root, ["Normal", "Osteoporosis"], (0.6, 0.2, 0.2), seed=3, progress=False)
    notes = {e.relative: e.note for e in data.entries}
    pair = sorted([notes["Normal/5.png"], notes["Normal/5-again.png"]])  # one kept, one dropped
    assert pair[0] == "" and pair[1].startswith("exact copy: same bytes as Normal/5")
    assert notes["Normal/7.png"].startswith("conflicting labels")
    assert notes["Osteoporosis/7-mislabelled.png"].startswith("conflicting labels")
    assert notes["Osteoporosis/broken.png"].startswith("unreadable: ")
    split_of = {e.relative: e.split for e in data.entries}
    assert split_of["Normal/6.png"] == split_of["Normal/6-full.png"] != "excluded"
    assert len({e.group for e in data.entries if e.relative.startswith("Normal/6")}) == 1
    # stratified: each class spread 60/20/20 over its usable images
    for name, usable in (("Normal", 40), ("Osteoporosis", 40)):  # 42 files each, 2 excluded
        counts = {s: sum(1 for e in data.entries if e.split == s and e.item.class_name == name)
                  for s in ("train", "val", "test")}
        assert sum(counts.values()) == usable
        assert abs(counts["test"] - 0.2 * usable) <= 1 and abs(counts["val"] - 0.2 * usable) <= 1
    # seeded: same seed same split, another seed another split
    again = prepare(root, ["Normal", "Osteoporosis"], (0.6, 0.2, 0.2), seed=3, progress=False)
    other = prepare(root, ["Normal", "Osteoporosis"], (0.6, 0.2, 0.2), seed=4, progress=False)
    assert [e.split for e in again.entries] == [e.split for e in data.entries]
    assert [e.split for e in other.entries] != [e.split for e in data.entries]

    manifest = tmp_path / "split.csv"
    write_split_manifest(manifest, data)
    rows = list(csv.DictReader(manifest.open()))
    assert set(rows[0]) == {"path", "class", "source", "split", "group", "sha256", "note"}
    assert {row["source"] for row in rows} == {"all"}  # no sources given
    assert read_split_manifest(manifest) == split_of


def test_bad_fractions(tmp_path) -> None:
    from kedge.runtime.errors import KedgeError

    root = tmp_path / "d"
    write_knees(root, "Normal", range(3))
    write_knees(root, "Osteoporosis", range(3, 6))
    with pytest.raises(KedgeError, match="sum to 1"):
        prepare(root, ["Normal", "Osteoporosis"], (0.5, 0.2, 0.2), progress=False)


def test_split_is_stratified_by_source_and_class(tmp_path) -> None:
    """Two sources with different class mixes: every (source, class) cell is spread over
    the splits, and split.csv records each file's source."""
    from kedge.runtime.inputs.folders import read_split_sources
    from kedge.runtime.inputs.sources import make_spec

    root = tmp_path / "d"
    for source, mix in (("siteA", {"Normal": 30, "Osteoporosis": 10}), ("siteB", {"Normal": 10, "Osteoporosis": 30})):
        for name, n in mix.items():
            folder = root / source / name
            folder.mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(folder / f"{i}.png"), knee(hash((source, name, i)) % 10_000, class_density(name)))
    data = prepare(root, ["Normal", "Osteoporosis"], (0.6, 0.2, 0.2), seed=0, progress=False,
                   sources=make_spec(None, "folder"))
    assert data.sources == ["siteA", "siteB"]
    for source, name, n in (("siteA", "Normal", 30), ("siteA", "Osteoporosis", 10), ("siteB", "Normal", 10),
                            ("siteB", "Osteoporosis", 30)):
        cell = [e for e in data.entries if e.item.source == source and e.item.class_name == name]
        counts = {s: sum(e.split == s for e in cell) for s in ("train", "val", "test")}
        assert sum(counts.values()) == n and counts["test"] == round(0.2 * n) and counts["val"] == round(0.2 * n)
    write_split_manifest(tmp_path / "split.csv", data)
    recorded = read_split_sources(tmp_path / "split.csv")
    assert recorded["siteA/Normal/0.png"] == "siteA" and recorded["siteB/Osteoporosis/0.png"] == "siteB"
