"""Backends as plug-ins, the OpenVINO backend, and `auto` choosing only verified pairs.

The toy backend below is the proof that adding a backend is one class plus one
registration line: it runs the FP32 ONNX with ONNX's own pure-numpy reference
evaluator (a genuinely different runtime), and from that one line it is listed (with
its own line in `kedge info`), parity-checked, benchmarked, chosen and used by
Predictor like the others.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from leanbundle import CLASSES, make_lean_bundle

from kedge.runtime.backends.base import Backend, Session
from kedge.runtime.bundle.manifest import load_bundle
from kedge.runtime.errors import KedgeError


class ReferenceSession(Session):
    def __init__(self, path: Path) -> None:
        from onnx.reference import ReferenceEvaluator

        self._evaluator = ReferenceEvaluator(str(path))
        self.name = "toy:cpu onnx reference evaluator"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._evaluator.run(None, {"image": batch.astype(np.float32)})[0], np.float32)


class ToyBackend(Backend):
    name = "toy"
    device = "cpu"
    forms = ("onnx-fp32",)
    opened = 0

    def open(self) -> Session:
        ToyBackend.opened += 1
        return ReferenceSession(self.locate())


@pytest.fixture(scope="module")
def verified(tmp_path_factory, small_data) -> Path:
    """A tiny bundle (FP32 and CPU INT8 ONNX) with parity rows for every pair runnable here."""
    return make_lean_bundle(tmp_path_factory.mktemp("verified") / "tiny", small_data)


def test_a_new_backend_is_one_class_and_one_registration_line(tmp_path, small_data, monkeypatch) -> None:
    from click.testing import CliRunner

    from kedge.cli import main
    from kedge.runtime import backends
    from kedge.runtime.backends import backends_for, runnable_pairs
    from kedge.runtime.bundle.forms import form
    from kedge.runtime.checks.choice import choose
    from kedge.runtime.checks.parity import bundle_parity
    from kedge.runtime.infer import Prediction, Predictor
    from kedge.runtime.inputs.folders import expand_inputs
    from kedge.runtime.reports.bench import bundle_pairs, run_bench, synthetic_jpeg

    monkeypatch.setattr(backends, "REGISTRY", dict(backends.REGISTRY))  # the registry as it was, afterwards
    backends.register("toy", ToyBackend)  # the one registration line

    bundle_dir = make_lean_bundle(tmp_path / "tiny", small_data, int8=False, parity=False)
    bundle = load_bundle(bundle_dir)
    assert "toy" in backends_for(form("onnx-fp32"))
    assert "toy/onnx-fp32/fp32" in {p.key for p in runnable_pairs(bundle)}
    opened = ToyBackend.opened
    idle = ToyBackend(bundle, form("onnx-fp32"))
    assert not idle.active and ToyBackend.opened == opened  # constructing loads nothing

    with pytest.raises(KedgeError, match="toy onnx-fp32 fp32 was never parity-checked.*--allow-unverified"):
        choose(bundle, "toy")
    assert not choose(bundle, "toy", allow_unverified=True).verified

    result = bundle_parity(bundle, small_data, None, progress=False, backends=["onnxruntime", "toy"])
    toy_row = next(r for r in result["rows"] if r["backend"] == "toy")
    assert toy_row["passed"] and toy_row["max_abs_diff"] < 1e-4 and toy_row["runner"].startswith("toy:cpu")
    bundle = load_bundle(bundle_dir)
    assert choose(bundle, "toy").pair.key == "toy/onnx-fp32/fp32"

    shown = CliRunner().invoke(main, ["info", "--model", str(bundle_dir)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "toy            unknown" in lines  # its line among the backends: its name and version()
    assert any(line.startswith("  toy         onnx-fp32      fp32  passed: ") for line in lines), shown.output

    paths = expand_inputs([small_data])[:5]
    with Predictor(bundle, "toy") as predictor:
        results = list(predictor.predict(paths, batch_size=2))
    assert all(isinstance(r, Prediction) and r.backend == "toy" and r.form == "onnx-fp32" for r in results)
    with Predictor(bundle, "onnxruntime", "fp32") as reference:
        expected = list(reference.predict(paths, batch_size=2))
    for a, b in zip(results, expected, strict=True):
        assert isinstance(a, Prediction) and isinstance(b, Prediction)
        assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)

    pairs = bundle_pairs(bundle, backends=["toy"])
    rows = run_bench(bundle, pairs, [synthetic_jpeg(512)], [1], ["engine"], warmup=0, iterations=2)
    assert [(r.backend, r.form, r.precision, r.parity) for r in rows] == [("toy", "onnx-fp32", "fp32", "passed")]


def _mark(bundle_dir: Path, failed: set[str]) -> None:
    """Rewrite the recorded parity so that exactly the pairs in `failed` (backend/form/precision) FAILED."""
    from kedge.runtime.checks.parity import record_parity, row_key

    bundle = load_bundle(bundle_dir)
    result = dict(bundle.manifest["parity"])
    rows = []
    for row in result["rows"]:
        fail = row_key(row) in failed
        rows.append({**row, "passed": not fail, "problems": ["agreement 38.89% < 98.0%"] if fail else []})
    bundle.manifest["parity"] = {}  # replace, do not merge
    record_parity(bundle, {**result, "rows": rows})


def test_auto_never_uses_a_pair_whose_parity_failed(verified, small_data, tmp_path) -> None:
    from kedge.runtime.backends import runnable_pairs
    from kedge.runtime.checks.choice import choose

    bundle_dir = tmp_path / "tiny"
    shutil.copytree(verified, bundle_dir)
    pairs = {p.key for p in runnable_pairs(load_bundle(bundle_dir))}
    int8 = {k for k in pairs if "/onnx-int8/" in k}
    assert int8 and len(pairs) > len(int8)

    _mark(bundle_dir, pairs - {"onnxruntime/onnx-int8/int8"})  # the reference's own row too
    assert choose(load_bundle(bundle_dir)).pair.key == "onnxruntime/onnx-int8/int8"  # the one verified pair

    _mark(bundle_dir, int8)  # a bundle whose INT8 rows FAILED, every other pair passed
    bundle = load_bundle(bundle_dir)
    choice = choose(bundle)
    assert choice.pair.form.name != "onnx-int8" and choice.verified
    with pytest.raises(KedgeError, match=r"onnx-int8 int8 FAILED parity: agreement 38.89% < 98.0%.*"
                                         r"--allow-unverified"):
        choose(bundle, "onnxruntime", "int8")
    forced = choose(bundle, "onnxruntime", "int8", allow_unverified=True)
    assert forced.pair.key == "onnxruntime/onnx-int8/int8" and not forced.verified and "UNVERIFIED" in forced.reason

    image = str(next(small_data.rglob("*.png")))
    run = _kedge("infer", image, "--model", str(bundle_dir), "--json", "--quiet")
    assert run.returncode == 0, run.stderr
    assert {r["form"] for r in json.loads(run.stdout)} != {"onnx-int8"}
    refused = _kedge("infer", image, "--model", str(bundle_dir), "--backend", "onnxruntime", "--precision", "int8")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1 and "FAILED parity" in lines[0] and "Traceback" not in lines[0]
    info = _kedge("info", "--model", str(bundle_dir))
    assert "onnxruntime onnx-int8      int8  FAILED: agreement 38.89%" in info.stdout


def test_auto_refuses_a_bundle_without_any_parity(tmp_path, small_data) -> None:
    from kedge.runtime.checks.choice import choose

    bundle = load_bundle(make_lean_bundle(tmp_path / "tiny", small_data, int8=False, parity=False))
    with pytest.raises(KedgeError, match=r"no \(backend, form\) pair passed parity.*was never parity-checked.*"
                                         r"kedge parity"):
        choose(bundle)


def _kedge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kedge.cli", *args], capture_output=True, text=True, timeout=300)


# --- OpenVINO --------------------------------------------------------------------------------

def test_openvino_precision_is_explicit_threads_apply_and_the_cache_is_keyed(verified, kedge_cache) -> None:
    pytest.importorskip("openvino")
    from kedge.runtime.backends import pair
    from kedge.runtime.backends.openvino import OpenVINO, cache_folder, cpu_capabilities
    from kedge.runtime.bundle.forms import form

    bundle = load_bundle(verified)
    fp32 = form("onnx-fp32")
    assert OpenVINO.precisions(fp32) == (("fp32", "bf16") if "BF16" in cpu_capabilities() else ("fp32",))
    assert OpenVINO.precisions(form("onnx-int8")) == ("int8",)
    batch = np.random.default_rng(1).random((3, 224, 224, 3), dtype=np.float32)
    with pair("onnxruntime", "onnx-fp32").open(bundle) as ort:
        expected = ort.infer(batch)
    with pair("openvino", "onnx-fp32").open(bundle, threads=1) as fresh:
        compiled = fresh.session._compiled  # type: ignore[union-attr]
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
        first = fresh.infer(batch)
    assert np.abs(first - expected).max() < 1e-4  # f32 really is f32, even where the CPU has BF16
    sha = bundle.manifest["files"]["model.onnx"]
    folder = cache_folder()
    assert folder.is_relative_to(kedge_cache) and OpenVINO.version().split()[-1] in str(folder)
    assert (folder / f"{sha[:32]}.fp32.threads1.blob").is_file()
    with pair("openvino", "onnx-fp32").open(bundle, threads=1) as cached:
        assert cached.session.cached  # type: ignore[union-attr]
        compiled = cached.session._compiled  # type: ignore[union-attr]
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
        assert np.array_equal(cached.infer(batch), first)  # the cached blob is the same compiled model


def test_infer_says_which_pair_runs_and_why(verified, small_data) -> None:
    from kedge.runtime.checks.choice import choose

    run = _kedge("infer", str(next(small_data.rglob("*.png"))), "--model", str(verified))
    assert run.returncode == 0, run.stderr
    auto = choose(load_bundle(verified)).pair
    line = next(line for line in run.stderr.splitlines() if line.startswith("tiny: "))
    assert line.startswith(f"tiny: {auto} (") and "passed parity" in line
    assert run.stdout.split(": ", 1)[1].split()[0] in CLASSES


def test_backends_claim_forms_by_name_or_by_the_tables_format() -> None:
    """ONNX Runtime and OpenVINO run every ONNX row, TensorRT every engine row (a new row
    needs no backend edit), and the forms Keras and Triton bring themselves are claimed by
    no backend that reads files of the table."""
    from kedge.runtime.backends import backend_class, backends_for
    from kedge.runtime.bundle.forms import FORMS

    for spec in FORMS.values():
        assert backends_for(spec) == (["tensorrt"] if spec.format == "engine" else ["openvino", "onnxruntime"])
    for name in ("keras", "triton"):
        assert all(backends_for(own) == [] for own in backend_class(name).own_forms)


def test_engine_plans_and_export_names_agree_with_the_table_of_forms() -> None:
    from kedge.export.engine import build_plan
    from kedge.runtime.bundle.forms import FORMS, form_of_artifact

    for precision in ("fp32", "fp16", "int8"):
        for major in (10, 11):
            key, _ = build_plan(precision, major)
            source = form_of_artifact(key)
            assert source is not None and source.name in FORMS[f"trt-{precision}"].built_from


def test_export_gate_needs_each_form_to_pass_on_some_backend() -> None:
    from kedge.runtime.checks.parity import forms_passed

    rows = [{"form": "onnx-fp32", "passed": True}, {"form": "onnx-int8", "passed": True},
            {"form": "onnx-int8", "passed": False}]  # OpenVINO's INT8 FAILED, ONNX Runtime's PASSED
    assert forms_passed(rows)
    assert not forms_passed([*rows[:1], rows[2]])  # no backend reproduces the INT8 file


def test_a_shipped_bundle_takes_back_the_model_keras_it_was_shipped_without(tmp_path) -> None:
    import hashlib

    from kedge.runtime.bundle.manifest import Bundle
    from kedge.train.backend import keras_file

    original = b"the Keras model this bundle was shipped from"
    manifest = {"model": {"name": "tiny", "classes": CLASSES}, "artifacts": {},
                "shipped": {"left_out": {"keras": {"file": "model.keras", "bytes": len(original),
                                                   "sha256": hashlib.sha256(original).hexdigest()}}}}
    bundle = Bundle(tmp_path, manifest)
    with pytest.raises(KedgeError, match=r"model.keras was left out when this bundle was shipped; put the one "
                                         r"it was shipped from \(sha256 [0-9a-f]{12}\) beside kedge.json"):
        keras_file(bundle)
    (tmp_path / "model.keras").write_bytes(b"another model")
    with pytest.raises(KedgeError, match="not the model.keras this bundle was shipped from"):
        keras_file(bundle)
    (tmp_path / "model.keras").write_bytes(original)
    assert keras_file(bundle) == tmp_path / "model.keras"
