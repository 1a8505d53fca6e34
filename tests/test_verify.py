"""`kedge golden` and `kedge verify` on a small bundle made without TensorFlow, on this
CPU-only machine: every runnable (backend, form, precision) pair checked against the
stored golden set, check-trt run, and the report says plainly that no engine was built."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from leanbundle import make_lean_bundle

from kedge.runtime.backends.base import Backend, Session

pytest.importorskip("onnx")


def _kedge(*args):
    return subprocess.run([sys.executable, "-m", "kedge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def bundle(synthetic_data, tmp_path_factory) -> Path:
    """The lean bundle plus its symmetric TensorRT Q/DQ form, as export makes it."""
    from kedge.calibration.qdq import quantize
    from kedge.runtime.bundle.manifest import load_bundle, new_bundle

    folder = make_lean_bundle(tmp_path_factory.mktemp("verify") / "tiny", synthetic_data)
    ranges = next((folder / "calibration").glob("ranges.*.json"))
    quantize(folder / "model.onnx", ranges, "minmax", "tensorrt", folder / "model.int8.qdq.onnx")
    manifest = {k: v for k, v in load_bundle(folder).manifest.items() if k != "files"}
    manifest["artifacts"]["onnx_int8_qdq"] = "model.int8.qdq.onnx"
    new_bundle(folder, manifest)
    return folder


def test_golden_is_deterministic_and_stores_no_pixels(bundle) -> None:
    from kedge.runtime.checks.golden import draw, pool_densities

    first, again = draw(pool_densities(6), 3), draw(pool_densities(6), 3)
    assert first.pngs == again.pngs and first.pixel_sha256 == again.pixel_sha256
    assert draw(pool_densities(6), 4).pixel_sha256 != first.pixel_sha256
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
    pairs = _runnable(bundle)
    assert {"onnxruntime onnx-fp32 fp32", "onnxruntime onnx-int8 int8", "onnxruntime onnx-int8-qdq int8"} <= pairs
    golden = {n.removeprefix("golden ") for n in checks if n.startswith("golden ")} - {"engines"}
    assert golden == pairs  # every runnable pair, each once
    for name in pairs:
        assert checks[f"golden {name}"]["status"] == "passed", checks[f"golden {name}"]
        assert checks[f"golden {name}"]["data"]["images"] == 9
    assert {f"{r['backend']} {r['form']} {r['precision']}" for r in data["bench"]} == pairs
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
    line = [x for x in result.stdout.splitlines() if "golden onnxruntime onnx-int8 int8:" in x][0]
    assert line.startswith("FAILED")
    assert result.stdout.splitlines()[-1].endswith("FAILED")


def test_verify_without_a_golden_set_says_what_to_run(bundle, tmp_path) -> None:
    import shutil

    from kedge.runtime.bundle.manifest import load_bundle, new_bundle

    copy = tmp_path / "plain"
    shutil.copytree(bundle, copy)
    manifest = {k: v for k, v in load_bundle(copy).manifest.items() if k not in ("files", "golden")}
    new_bundle(copy, manifest)
    result = _kedge("verify", copy, "--bench-iterations", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOT CHECKABLE HERE  golden set: the bundle has no golden set (run `kedge golden BUNDLE`" in result.stdout


def test_verify_data_without_fp32_reference_uses_the_recorded_parity(bundle, synthetic_data, tmp_path) -> None:
    """A shipped bundle has no FP32 ONNX: each form's accuracy on --data is held to the one
    its ONNX file had in the bundle's recorded parity on the same folder and split."""
    import shutil

    from kedge.runtime.bundle.manifest import load_bundle, new_bundle

    copy = tmp_path / "shipped"
    shutil.copytree(bundle, copy)
    assert _kedge("parity", copy, "--data", synthetic_data, "--reference", "onnx-fp32").returncode == 0
    manifest = {k: v for k, v in load_bundle(copy).manifest.items() if k != "files"}
    del manifest["artifacts"]["onnx_fp32"]
    (copy / "model.onnx").unlink()
    for row in manifest["parity"]["rows"]:
        if row["form"] == "onnx-int8":
            row["accuracy"] += 0.05  # as if the CPU form had done better (on every backend) when it shipped
    new_bundle(copy, manifest)
    result = _kedge("verify", copy, "--data", synthetic_data, "--bench-iterations", "0", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    qdq, cpu = checks["parity onnxruntime onnx-int8-qdq int8"], checks["parity onnxruntime onnx-int8 int8"]
    assert qdq["status"] == "passed", qdq
    assert cpu["status"] == "failed"
    assert "recorded for onnx-int8 at shipping" in cpu["detail"]
    assert result.returncode == 1


def _runnable(bundle: Path) -> set[str]:
    from kedge.runtime.backends import runnable_pairs
    from kedge.runtime.bundle.manifest import load_bundle

    return {str(p) for p in runnable_pairs(load_bundle(bundle))}


class _OnnxSession(Session):
    """ONNX Runtime on the file, its answers optionally swapped between classes (a broken runtime)."""

    def __init__(self, path: Path, broken: bool) -> None:
        from kedge.runtime.backends.onnxruntime import OnnxRuntimeSession

        self._inner, self._broken, self.name = OnnxRuntimeSession(path), broken, "toy"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = self._inner.infer(batch)
        return np.roll(out, 1, axis=1) if self._broken else out


class GoodToy(Backend):
    name, forms = "good-toy", ("onnx-int8",)

    def open(self) -> Session:
        return _OnnxSession(self.locate(), broken=False)


class BrokenToy(Backend):
    name, forms = "broken-toy", ("onnx-int8",)

    def open(self) -> Session:
        return _OnnxSession(self.locate(), broken=True)


def test_verify_runs_and_reports_every_registered_pair(bundle, tmp_path, monkeypatch) -> None:
    """Two backends plugged in with one line each: verify runs both on the golden set and
    reports each on its own line; the broken one fails verify, unless the bundle's recorded
    parity already FAILED that pair (auto never runs it), which is reported as such."""
    import shutil

    from kedge.export.verify import verify_bundle
    from kedge.runtime import backends
    from kedge.runtime.bundle.manifest import load_bundle, new_bundle

    monkeypatch.setattr(backends, "REGISTRY", dict(backends.REGISTRY))
    backends.register("good-toy", GoodToy)
    backends.register("broken-toy", BrokenToy)
    copy = tmp_path / "toys"
    shutil.copytree(bundle, copy)
    assert _kedge("golden", copy, "--count", "6").returncode == 0
    report = verify_bundle(load_bundle(copy), build=False, bench_iterations=0)
    checks = {c.name: c for c in report.checks}
    assert checks["golden good-toy onnx-int8 int8"].status == "passed"
    assert checks["golden broken-toy onnx-int8 int8"].status == "failed"
    assert checks["golden onnxruntime onnx-int8 int8"].status == "passed"
    assert not report.passed
    manifest = {k: v for k, v in load_bundle(copy).manifest.items() if k != "files"}
    manifest["parity"] = {"reference": "onnx-fp32", "data": "d", "split": "test", "rows": [
        {"backend": "broken-toy", "form": "onnx-int8", "precision": "int8", "passed": False, "n": 6,
         "problems": ["agreement 0% < 98%"]}]}
    new_bundle(copy, manifest)
    report = verify_bundle(load_bundle(copy), build=False, bench_iterations=0)
    assert {c.name: c for c in report.checks}["golden broken-toy onnx-int8 int8"].status == "failed as recorded"
    assert report.passed
