"""Calibration image choice, the cache key, the TensorRT cache format, and parity rows
(numpy and ONNX Runtime only: no TensorFlow needed)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from kedge.calibration.images import _quotas, select_images
from kedge.calibration.trt_cache import cache_text, read_cache, trt_version_code, with_version
from kedge.runtime.checks.parity import compare, format_table
from kedge.runtime.checks.synthetic import write_dataset
from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.folders import LabelledImage
from kedge.runtime.reports.evaluate import Predictions


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calib") / "knees"
    write_dataset(root, ["Normal", "Osteopenia", "Osteoporosis"], per_class=10, seed=3, size=64)
    return root


def test_quotas_are_proportional_and_exact() -> None:
    assert _quotas([100, 100, 50], 50) == [20, 20, 10]
    assert sum(_quotas([7, 3, 1], 6)) == 6 and all(q >= 1 for q in _quotas([7, 3, 1], 6))
    assert _quotas([2, 2], 10) == [2, 2]  # never more than there is


def test_selection_is_stratified_and_deterministic(small_set: Path) -> None:
    classes = ["Normal", "Osteopenia", "Osteoporosis"]
    a = select_images(small_set, classes, size=9, seed=1)
    b = select_images(small_set, classes, size=9, seed=1)
    assert a.paths == b.paths and a.fingerprint() == b.fingerprint()
    assert a.stratified_by == classes
    assert sorted(p.parent.name for p in a.paths) == ["Normal"] * 3 + ["Osteopenia"] * 3 + ["Osteoporosis"] * 3
    c = select_images(small_set, classes, size=9, seed=2)
    assert c.paths != a.paths and c.fingerprint() != a.fingerprint()
    assert len(select_images(small_set, classes, size=None).paths) == 30


def test_selection_restricted_to_a_split(small_set: Path) -> None:
    classes = ["Normal", "Osteopenia", "Osteoporosis"]
    every = [p.relative_to(small_set).as_posix() for p in select_images(small_set, classes, size=None).paths]
    train = set(every[::2])
    chosen = select_images(small_set, classes, size=None, only=train)
    assert {p.relative_to(small_set).as_posix() for p in chosen.paths} == train
    assert chosen.fingerprint() != select_images(small_set, classes, size=None).fingerprint()
    with pytest.raises(KedgeError, match="in the chosen split"):
        select_images(small_set, classes, only=set())


def test_flat_folder_and_unreadable_files(small_set: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted((small_set / "Normal").glob("*.png"))[:4]):
        (flat / f"{i}.png").write_bytes(path.read_bytes())
    (flat / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    chosen = select_images(flat, ["Normal", "Osteoporosis"], size=None)
    assert chosen.stratified_by is None and len(chosen.paths) == 4
    assert [Path(p).name for p, _ in chosen.skipped] == ["broken.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(KedgeError, match="no calibration images"):
        select_images(tmp_path / "empty", ["X"])


def test_trt_cache_format() -> None:
    text = cache_text({"b": (-2.0, 1.0), "a": (0.0, 12.7), "zero": (0.0, 0.0)}, "entropy", "10.3.0")
    header, scales = read_cache(text)
    assert header == "TRT-100300-EntropyCalibration2"
    assert text.splitlines()[1].startswith("a: ")  # sorted
    assert scales["a"] == pytest.approx(0.1) and scales["b"] == pytest.approx(2 / 127)
    assert scales["zero"] > 0  # TensorRT rejects a zero scale
    assert text.splitlines()[1] == f"a: {struct.pack('>f', 12.7 / 127).hex()}"
    assert cache_text({"a": (0, 1)}, "minmax").startswith("TRT-100300-MinMaxCalibration\n")
    assert with_version(text, "10.13.2").startswith("TRT-101302-EntropyCalibration2\na: ")
    assert trt_version_code("8.6.1") == 8601
    with pytest.raises(KedgeError):
        with_version("not a cache\n", "10.3")


def _predictions(probabilities: list[list[float]], labels: list[int]) -> Predictions:
    items = [LabelledImage(Path(f"{i}.png"), label, str(label)) for i, label in enumerate(labels)]
    return Predictions(items, np.array(probabilities, np.float32))


def test_parity_rows_pass_and_fail_on_the_documented_thresholds() -> None:
    labels = [0] * 50 + [1] * 50
    ref_p = [[0.9, 0.1] if y == 0 else [0.2, 0.8] for y in labels]
    reference = _predictions(ref_p, labels)
    classes = ["Normal", "Osteoporosis"]
    same = compare("onnx-fp32", "x", "fp32", _predictions([[a + 5e-5, b - 5e-5] for a, b in ref_p], labels),
                   reference, classes)
    assert same.passed and same.agreement == 1.0 and same.max_abs_diff == pytest.approx(5e-5, rel=1e-2)
    drift = compare("onnx-fp32", "x", "fp32", _predictions([[a + 5e-4, b - 5e-4] for a, b in ref_p], labels),
                    reference, classes)
    assert not drift.passed and "max |dp|" in drift.problems[0]
    one_flip = [list(p) for p in ref_p]
    one_flip[0] = [0.4, 0.6]  # a correct Normal becomes wrong: agreement 99 %, accuracy -1 point
    fp16 = compare("onnx-fp16", "x", "fp16", _predictions(one_flip, labels), reference, classes)
    assert not fp16.passed and fp16.agreement == 0.99
    int8 = compare("onnx-int8", "x", "int8", _predictions(one_flip, labels), reference, classes)
    assert int8.passed  # 99 % >= 98 %, and 1 point is within 1 point
    two_flips = [list(p) for p in one_flip]
    two_flips[1] = [0.4, 0.6]
    int8_bad = compare("onnx-int8", "x", "int8", _predictions(two_flips, labels), reference, classes)
    assert not int8_bad.passed and "accuracy" in int8_bad.problems[-1]
    table = format_table([same, drift, int8_bad])
    assert "PASSED" in table and table.count("FAILED") == 2


def test_near_ties_are_not_counted_only_within_the_precisions_tolerance() -> None:
    """The small-n rule (runtime/checks/parity.py): at n=36 one flip is 2.8 points, so a flip on an
    image the reference itself called within 2 x tolerance is reported but not counted."""
    labels = [0] * 18 + [1] * 18
    ref_p = [[0.9, 0.1] if y == 0 else [0.2, 0.8] for y in labels]
    ref_p[0] = [0.52, 0.48]  # the reference's margin is 0.04 <= 2 x 0.05 (INT8's tolerance)
    reference = _predictions(ref_p, labels)
    classes = ["Normal", "Osteoporosis"]
    flipped = [list(p) for p in ref_p]
    flipped[0] = [0.49, 0.51]  # |dp| 0.03: within INT8's tolerance
    tie = compare("onnx-int8", "x", "int8", _predictions(flipped, labels), reference, classes)
    assert tie.passed and tie.near_ties == 1 and tie.agreement == pytest.approx(35 / 36)
    assert "ties" in format_table([tie])
    fp16 = compare("onnx-fp16", "x", "fp16", _predictions(flipped, labels), reference, classes)
    assert not fp16.passed and fp16.near_ties == 0  # 0.03 is past FP16's tolerance: no excuse
    drifted = [list(p) for p in flipped]
    drifted[5] = [0.84, 0.16]  # one other image off by 0.06: the form is past tolerance
    loose = compare("onnx-int8", "x", "int8", _predictions(drifted, labels), reference, classes)
    assert not loose.passed and loose.near_ties == 0 and "agreement 97.22%" in loose.problems[0]
