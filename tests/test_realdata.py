"""Checks on the real radiographs (../shared/data or KEDGE_REAL_DATA); skipped without them.

The images are read in place and never copied into the project.
"""
from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from kedge.runtime.inputs.folders import scan_labelled
from kedge.runtime.inputs.preprocess import preprocess

pytestmark = pytest.mark.realdata
CLASSES = ["Normal", "Osteopenia", "Osteoporosis"]


def manifest(root):
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def twins(root):
    return [(row["path"], row["same_radiograph_as"]) for row in manifest(root) if row["same_radiograph_as"]]


def test_every_real_image_preprocesses(real_data) -> None:
    items = scan_labelled(real_data, CLASSES)  # both class trees, side by side
    expected = Counter((row["path"].split("/")[0], row["label"]) for row in manifest(real_data))
    assert Counter((i.path.relative_to(real_data).parts[0], i.class_name) for i in items) == expected
    for item in items:
        x = preprocess(item.path)
        assert x.shape == (224, 224, 3) and 0 <= x.min() <= x.max() <= 1


def test_full_resolution_and_224_twins_give_nearly_the_same_tensor(real_data) -> None:
    pairs = twins(real_data)
    assert pairs and all((real_data / p).is_file() for pair in pairs for p in pair)
    for full, small in pairs:
        difference = np.abs(preprocess(real_data / full) - preprocess(real_data / small))
        assert difference.mean() < 0.015, (full, small)  # measured: at most 0.0072


def test_reduced_jpeg_decode_barely_moves_the_full_resolution_tensors(real_data) -> None:
    for full, _ in twins(real_data):
        difference = np.abs(preprocess(real_data / full) - preprocess(real_data / full, reduced=False))
        assert difference.mean() < 0.001, full  # measured: at most 0.00039, against 0.0053 to the twin


def test_dedup_finds_the_twins_and_nothing_else(real_data) -> None:
    from kedge.train.dedup import duplicate_groups, fingerprint

    paths = sorted(p.relative_to(real_data).as_posix() for p in real_data.rglob("*")
                   if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    groups = duplicate_groups([fingerprint(str(real_data / p)) for p in paths])
    group_of = dict(zip(paths, groups, strict=True))
    for full, small in twins(real_data):
        assert group_of[full] == group_of[small], (full, small)
    sizes = np.bincount(groups)
    assert (sizes > 1).sum() == len(twins(real_data)) and sizes.max() == 2  # no other duplicate in the curated set


@pytest.mark.slow
def test_train_and_evaluate_on_real_data(real_data, tf_keras, tmp_path) -> None:
    from click.testing import CliRunner

    from kedge.cli import main
    from kedge.runtime.bundle.manifest import load_bundle

    out = tmp_path / "cnn"
    result = CliRunner().invoke(main, ["train", "knee-cnn", "--data", str(real_data / "knee-3class"), "--out",
                                       str(out), "--width", "0.25", "--epochs", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    test = load_bundle(out).manifest["metrics"]["test"]
    assert test["n"] == 56 and set(test["by_format"]) == {"jpeg", "png"}


@pytest.mark.slow
def test_export_and_parity_on_real_data(real_data, tf_keras, tmp_path) -> None:
    """A small knee-cnn trained on the real radiographs, exported to every ONNX form with
    real calibration images, then the parity gate on the whole folder."""
    import json

    from click.testing import CliRunner

    from kedge.cli import main

    data = str(real_data / "knee-3class")
    out = tmp_path / "cnn"
    trained = CliRunner().invoke(main, ["train", "knee-cnn", "--data", data, "--out", str(out), "--width", "0.25",
                                        "--epochs", "8", "--quiet"])
    assert trained.exit_code == 0, trained.output
    result = CliRunner().invoke(main, ["export", str(out), "--fp16", "--int8", "--calib", data, "--quiet", "--json"])
    report = json.loads(result.output[result.output.index("{"):])
    # ONNX Runtime's rows, as before OpenVINO; OpenVINO's own rows are extra and only decide what auto may run
    rows = {r["form"]: r for r in report["parity"]["rows"] if r["backend"] in ("keras", "onnxruntime")}
    assert set(rows) == {"keras", "onnx-fp32", "onnx-fp16", "onnx-int8", "onnx-int8-qdq"}
    assert rows["onnx-fp32"]["max_abs_diff"] <= 1e-4 and rows["onnx-fp32"]["agreement"] == 1.0
    assert result.exit_code == (0 if report["parity"]["forms_passed"] else 1)
    assert all(r["passed"] for r in rows.values()), [r["problems"] for r in rows.values()]

    # The reduced JPEG decode keeps every full-resolution radiograph's class, in FP32 and INT8.
    from kedge.runtime.backends import pair
    from kedge.runtime.bundle.manifest import load_bundle

    bundle = load_bundle(out)
    fast = np.stack([preprocess(real_data / full) for full, _ in twins(real_data)])
    exact = np.stack([preprocess(real_data / full, reduced=False) for full, _ in twins(real_data)])
    for form in ("onnx-fp32", "onnx-int8"):
        with pair("onnxruntime", form).open(bundle) as backend:
            assert np.array_equal(backend.infer(fast).argmax(1), backend.infer(exact).argmax(1)), form


@pytest.mark.parametrize("model", ["knee-cnn", "resnet50-gru"])
def test_shipped_models_do_not_answer_from_the_source(real_data, model) -> None:
    """Issue 11's bar on the shipped models, over every real image with the manifest's
    collections as sources: no source gets one answer for 90 % of its images, collection A
    included (issue 19: its labels are no target, but one answer for all of it is the cue)."""
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.bundle.shipped import MODELS_DIR
    from kedge.runtime.infer import Predictor
    from kedge.runtime.inputs.sources import labelled_items, make_spec
    from kedge.runtime.reports.evaluate import predict_items
    from kedge.runtime.reports.shortcut import TOP_SHARE_LIMIT, audit

    bundle = load_bundle(MODELS_DIR / model)
    items = labelled_items(bundle, real_data, None, make_spec(real_data / "manifest.csv", None, "path", "collection"))
    assert {i.source for i in items} == {"A", "B", "C"}
    with Predictor(bundle) as predictor:
        report = audit(predict_items(predictor.runner, items, progress=False), bundle.classes)
    for name, row in report["by_source"].items():
        assert row["top_answer"]["share"] < TOP_SHARE_LIMIT, (name, row["top_answer"])
