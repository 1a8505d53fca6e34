"""`kedge golden` and `kedge verify` on a small bundle made without TensorFlow, on this
CPU-only machine: every CPU form checked against the stored golden set, check-trt run,
and the report says plainly that no engine was built."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from leanbundle import CLASSES, make_lean_bundle

pytest.importorskip("onnx")


def _kedge(*args):
    return subprocess.run([sys.executable, "-m", "kedge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def bundle(synthetic_data, tmp_path_factory) -> Path:
    """The lean bundle plus its symmetric TensorRT Q/DQ form, as export makes it."""
    from kedge.calibration.qdq import quantize
    from kedge.runtime.bundle import load_bundle, write_manifest

    folder = make_lean_bundle(tmp_path_factory.mktemp("verify") / "tiny", synthetic_data)
    ranges = next((folder / "calibration").glob("ranges.*.json"))
    quantize(folder / "model.onnx", ranges, "minmax", "tensorrt", folder / "model.int8.qdq.onnx")
    manifest = {k: v for k, v in load_bundle(folder).manifest.items() if k != "files"}
    manifest["artifacts"]["onnx_int8_qdq"] = "model.int8.qdq.onnx"
    write_manifest(folder, manifest)
    return folder


def test_golden_is_deterministic_and_stores_no_pixels(bundle) -> None:
    from kedge.device.golden import class_densities, draw

    first, again = draw(class_densities(CLASSES, 6), 3), draw(class_densities(CLASSES, 6), 3)
    assert first.pngs == again.pngs and first.pixel_sha256 == again.pixel_sha256
    assert draw(class_densities(CLASSES, 6), 4).pixel_sha256 != first.pixel_sha256
    result = _kedge("golden", bundle, "--count", "9", "--reference", "onnx-fp32")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((bundle / "kedge.json").read_text())
    golden = manifest["golden"]
    assert golden["reference"] == "onnx-fp32" and len(golden["pixel_sha256"]) == 9
    assert set(golden["outputs"]) == {"onnx-fp32", "onnx-int8", "onnx-int8-qdq"}
    assert np.allclose(np.sum(golden["outputs"]["onnx-fp32"], axis=1), 1, atol=1e-5)
    assert len(json.dumps(golden)) < 8000  # seeds, hashes and probabilities; no pixels


def test_verify_on_a_cpu_only_machine(bundle, tmp_path) -> None:
    assert _kedge("golden", bundle, "--count", "9").returncode == 0
    report_md = tmp_path / "verify.md"
    result = _kedge("verify", bundle, "--json", "--report", report_md, "--bench-iterations", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert data["passed"]
    assert checks["check-trt"]["status"] == "passed"
    assert checks["engines"]["status"] == "not checkable here"
    assert "no engine was built on this machine" in checks["engines"]["detail"]
    for form in ("onnx-fp32", "onnx-int8", "onnx-int8-qdq"):
        assert checks[f"golden {form}"]["status"] == "passed", checks[f"golden {form}"]
        assert checks[f"golden {form}"]["data"]["images"] == 9
    assert {r["form"] for r in data["bench"]} == {"onnx-fp32", "onnx-int8", "onnx-int8-qdq"}
    text = report_md.read_text()
    assert "**Result: PASSED**" in text and "| engines | not checkable here |" in text


def test_verify_fails_when_a_form_no_longer_matches_its_golden_outputs(bundle, tmp_path) -> None:
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    assert _kedge("golden", copy, "--count", "6").returncode == 0
    manifest = json.loads((copy / "kedge.json").read_text())
    stored = np.array(manifest["golden"]["outputs"]["onnx-int8"])
    manifest["golden"]["outputs"]["onnx-int8"] = np.roll(stored, 1, axis=1).tolist()  # another model's answers
    (copy / "kedge.json").write_text(json.dumps(manifest))
    result = _kedge("verify", copy, "--bench-iterations", "0")
    assert result.returncode == 1
    line = [x for x in result.stdout.splitlines() if "golden onnx-int8:" in x][0]
    assert line.startswith("FAILED")
    assert result.stdout.splitlines()[-1].endswith("FAILED")


def test_verify_without_a_golden_set_says_what_to_run(bundle, tmp_path) -> None:
    import shutil

    from kedge.runtime.bundle import load_bundle, write_manifest

    copy = tmp_path / "plain"
    shutil.copytree(bundle, copy)
    manifest = {k: v for k, v in load_bundle(copy).manifest.items() if k not in ("files", "golden")}
    write_manifest(copy, manifest)
    result = _kedge("verify", copy, "--bench-iterations", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOT CHECKABLE HERE  golden set: the bundle has no golden set (run `kedge golden BUNDLE`" in result.stdout


def test_verify_data_without_fp32_reference_uses_the_recorded_parity(bundle, synthetic_data, tmp_path) -> None:
    """A shipped bundle has no FP32 ONNX: each form's accuracy on --data is held to the one
    its ONNX file had in the bundle's recorded parity on the same folder and split."""
    import shutil

    from kedge.runtime.bundle import load_bundle, write_manifest

    copy = tmp_path / "shipped"
    shutil.copytree(bundle, copy)
    assert _kedge("parity", copy, "--data", synthetic_data, "--reference", "onnx-fp32").returncode == 0
    manifest = {k: v for k, v in load_bundle(copy).manifest.items() if k != "files"}
    del manifest["artifacts"]["onnx_fp32"]
    (copy / "model.onnx").unlink()
    rows = {r["form"]: r for r in manifest["parity"]["rows"]}
    rows["onnx-int8"]["accuracy"] += 0.05  # as if the CPU form had done better when it shipped
    write_manifest(copy, manifest)
    result = _kedge("verify", copy, "--data", synthetic_data, "--bench-iterations", "0", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["parity onnx-int8-qdq"]["status"] == "passed", checks["parity onnx-int8-qdq"]
    assert checks["parity onnx-int8"]["status"] == "failed"
    assert "recorded for onnx-int8 at shipping" in checks["parity onnx-int8"]["detail"]
    assert result.returncode == 1
