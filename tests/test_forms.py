"""The table of forms is the one place a form is declared.

The toy form below is the proof that adding a form is one row of FORMS plus its
converter: from that row alone, `kedge export` makes, gates and records it, parity and
the golden set cover it, the card lists it and `auto` picks it. Nothing else is edited.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from leanbundle import make_lean_bundle

from kedge.runtime.bundle.forms import FORMS, Form
from kedge.runtime.bundle.manifest import load_bundle


def copy_form(source: Path, target: Path, images: np.ndarray) -> dict[str, Any]:
    """The toy converter: the FP32 ONNX, copied (so it must agree with it exactly)."""
    shutil.copyfile(source, target)
    return {"tool": "copy", "gate_images": len(images)}


TOY = Form("onnx-toy", "fp16", "model.toy.onnx", "onnx_toy", "toy form: the FP32 ONNX, copied", ("onnx-fp32",),
           converter=copy_form, gate=1e-6)


def test_a_new_form_is_one_row_plus_its_converter(monkeypatch, small_data, tmp_path) -> None:
    from kedge.export.pipeline import ExportSettings, export_bundle
    from kedge.runtime.backends import runnable_pairs
    from kedge.runtime.checks.choice import choose
    from kedge.runtime.reports.card import render_card

    monkeypatch.setitem(FORMS, TOY.name, TOY)  # the one row
    folder = make_lean_bundle(tmp_path / "tiny", small_data, int8=False, parity=False)
    log: list[str] = []
    report = export_bundle(ExportSettings(bundle=load_bundle(folder), data=small_data, reference="onnx-fp32",
                                          progress=False), log.append)
    assert report.passed, report
    assert any(line.startswith("onnx-toy: model.toy.onnx (max |dp| vs FP32") for line in report.done)

    bundle = load_bundle(folder)  # as written to disk
    assert bundle.artifacts["onnx_toy"] == "model.toy.onnx"
    assert bundle.sha256("onnx_toy") == bundle.sha256("onnx_fp32")  # a copy, hashed when recorded
    assert bundle.exports["onnx_toy"]["source_onnx_sha256"] == bundle.sha256("onnx_fp32")
    assert bundle.exports["onnx_toy"]["tool"] == "copy"
    toy_rows = [r for r in bundle.parity["rows"] if r["form"] == "onnx-toy"]
    assert toy_rows and all(r["passed"] for r in toy_rows)
    assert bundle.golden is not None and "onnx-toy" in bundle.golden["outputs"]
    assert bundle.golden["files"]["onnx-toy"] == bundle.sha256("onnx_toy")

    assert "onnxruntime/onnx-toy/fp16" in {p.key for p in runnable_pairs(bundle)}  # listed
    card = render_card(bundle)
    assert "model.toy.onnx" in card and "onnx-toy" in card
    chosen = choose(bundle, precision="fp16")  # the only fp16 file of the bundle
    assert chosen.form.name == "onnx-toy" and chosen.verified, chosen.reason


def test_the_table_gives_what_was_typed_elsewhere() -> None:
    """check-trt's files, the engine build plan and the export hint all come from FORMS."""
    from kedge.export.engine import build_plan
    from kedge.runtime.bundle.forms import engine_precisions, options_that_make, tensorrt_bound

    assert [f.file for f in tensorrt_bound("10.3")] == ["model.onnx", "model.int8.qdq.onnx"]
    assert [f.file for f in tensorrt_bound("11")] == ["model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx"]
    assert engine_precisions() == ("fp32", "fp16", "int8")
    assert build_plan("fp16", 10) == ("onnx_fp32", "flags")
    assert build_plan("fp16", 11) == ("onnx_fp16", "strongly-typed")
    assert build_plan("int8", 10, "calibration-cache") == ("onnx_fp32", "calibration-cache")
    assert options_that_make("fp16") == "--fp16" and options_that_make("int8") == "--int8 --calib DIR"
    assert options_that_make("bf16") is None  # a precision backends run at, with no file of its own
    assert options_that_make("int8", engine=True) == "--engine --int8"
