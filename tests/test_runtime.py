"""The lean runtime: form choice, engine safety, `kedge infer`, `kedge bench`, `kedge info`,
and the reduced JPEG decode. No TensorFlow: the bundle here is built from ONNX directly."""
from __future__ import annotations

import csv
import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from leanbundle import CLASSES, make_lean_bundle

from conftest import BLOCK_TF
from kedge.runtime.bundle.manifest import load_bundle
from kedge.runtime.envelope.gate import GATE_FIELDS
from kedge.runtime.errors import KedgeError

REPORT_TF = ("import atexit, sys; atexit.register(lambda: sys.stderr.write("
             "'TENSORFLOW_LOADED=%s\\n' % ('tensorflow' in sys.modules))); ")


@pytest.fixture(scope="module")
def lean(tmp_path_factory, synthetic_data) -> Path:
    return make_lean_bundle(tmp_path_factory.mktemp("lean") / "tiny", synthetic_data)


@pytest.fixture(scope="module")
def images(tmp_path_factory, synthetic_data) -> Path:
    """Nine synthetic knees in nested folders, one of them a clinic-sized JPEG, plus one corrupt file."""
    root = tmp_path_factory.mktemp("infer")
    sources = sorted(synthetic_data.rglob("*.png"))[::20][:8]
    for i, src in enumerate(sources):
        target = root / ("nested" if i % 2 else "") / f"knee{i}.png"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(src.read_bytes())
    big = cv2.resize(cv2.imread(str(sources[0]), cv2.IMREAD_GRAYSCALE), (1400, 1200))
    cv2.imwrite(str(root / "big.jpg"), big)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def kedge(*args: str, block_tf: bool = False) -> subprocess.CompletedProcess:
    code = (BLOCK_TF if block_tf else REPORT_TF) + f"from kedge.cli import main; main({list(args)!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


# --- choosing a form ----------------------------------------------------------------------

def test_auto_picks_the_fastest_pair_that_passed_parity_and_says_why(lean) -> None:
    from kedge.runtime.bundle.engines import tensorrt_usable
    from kedge.runtime.checks.choice import choose
    from kedge.runtime.checks.parity import PASSED, status

    if tensorrt_usable():
        pytest.skip("this machine has TensorRT and a GPU; the CPU choice does not apply")
    bundle = load_bundle(lean)
    choice = choose(bundle)
    assert status(bundle, choice.pair)[0] == PASSED and choice.verified
    assert "passed parity and its golden check here" in choice.reason and "ms per image at batch 8" in choice.reason
    assert "measured earlier on this machine" in choose(bundle).reason  # the timing is cached per machine
    assert choose(bundle, "onnxruntime", "fp32").pair.form.name == "onnx-fp32"
    with pytest.raises(KedgeError, match=r"no fp16 ONNX form; make it with `kedge export .* --fp16`"):
        choose(bundle, precision="fp16")
    with pytest.raises(KedgeError, match="--backend tensorrt: needs TensorRT"):
        choose(bundle, "tensorrt")


def test_onnxruntime_providers_are_explicit_and_cpu_without_a_gpu() -> None:
    from kedge.runtime.backends.onnxruntime import choose_providers
    from kedge.runtime.cuda import has_gpu

    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    if has_gpu():
        pytest.skip("a GPU is visible")
    assert choose_providers("auto") == ["CPUExecutionProvider"]  # even if onnxruntime-gpu lists CUDA
    with pytest.raises(KedgeError, match="cannot use CUDA"):
        choose_providers("cuda")


# --- engine safety (the sidecar check runs before TensorRT is touched) ---------------------

def engine_info(**changes):
    from kedge.runtime.bundle.engines import EngineInfo

    fields = dict(model="knee-cnn", precision="int8", tensorrt_version="10.3.0", gpu_name="Orin",
                  compute_capability="8.7", source_onnx="model.int8.qdq.onnx", source_onnx_sha256="ab" * 32,
                  build_path="strongly-typed", batch={"min": 1, "opt": 1, "max": 8}, workspace_mib=1024,
                  build_seconds=1.0, built_at="2026-11-22T00:00:00+00:00")
    return EngineInfo(**{**fields, **changes})


def test_engine_mismatch_names_what_differs_and_the_rebuild_command(tmp_path) -> None:
    from kedge.runtime.bundle.engines import check_compatible

    engine = tmp_path / "cnn" / "engines" / "knee-cnn.int8.trt10.3.sm87.engine"
    check_compatible(engine, engine_info(), "10.3.0", "8.7", "ab" * 32)  # same TensorRT, GPU, ONNX: fine
    with pytest.raises(KedgeError) as err:
        check_compatible(engine, engine_info(), "11.0.0", "8.9", "cd" * 32)
    message = str(err.value)
    assert "TensorRT 10.3.0, this machine has 11.0.0" in message
    assert "compute capability 8.7 (Orin), this GPU is 8.9" in message
    assert "built from a different model.int8.qdq.onnx (sha256 abababababab, the bundle's is cdcdcdcdcdcd)" in message
    assert message.endswith(f"`kedge export {(tmp_path / 'cnn').resolve()} --engine --int8`")
    assert "\n" not in message


def test_engine_without_sidecar_is_refused(tmp_path) -> None:
    from kedge.runtime.bundle.engines import read_sidecar

    engine = tmp_path / "b" / "engines" / "knee-cnn.fp16.trt10.3.sm87.engine"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"plan")
    with pytest.raises(KedgeError, match=r"no sidecar .*; rebuild it with `kedge export .* --engine --fp16`"):
        read_sidecar(engine)


# --- kedge infer ---------------------------------------------------------------------------

def test_infer_json_without_tensorflow_and_one_bad_file(lean, images) -> None:
    result = kedge("infer", str(images), "--model", str(lean), "--json", "--batch-size", "4")
    assert result.returncode == 1  # one bad file: reported, the others classified
    assert "TENSORFLOW_LOADED=False" in result.stderr
    assert f"kedge: error: {images / 'broken.png'}:" in result.stderr and "Traceback" not in result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 9 and {tuple(sorted(r)) for r in rows} == {tuple(sorted((
        "backend", "fallback", "form", "label", "model", "path", "probabilities", *GATE_FIELDS, "withheld")))}
    assert all(r["inside"] is None and r["withheld"] is False for r in rows)  # no envelope: no input check
    assert result.stderr.count("no input check is possible") == 1  # said once, not per image
    assert {r["model"] for r in rows} == {"tiny"}
    from kedge.runtime.checks.choice import choose

    auto = choose(load_bundle(lean)).pair  # the pair infer picks by itself, named in every row
    assert {r["form"] for r in rows} == {auto.form.name} and {r["backend"] for r in rows} == {auto.backend}
    for r in rows:
        assert list(r["probabilities"]) == CLASSES and abs(sum(r["probabilities"].values()) - 1) < 1e-5
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    assert any("nested" in r["path"] for r in rows) and any(r["path"].endswith("big.jpg") for r in rows)


def test_infer_runs_with_tensorflow_unimportable(lean, images) -> None:
    result = kedge("infer", str(images / "knee0.png"), "--model", str(lean), "--backend", "onnxruntime",
                   "--precision", "fp32", block_tf=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{images / 'knee0.png'}: ")
    assert "tiny: onnxruntime onnx-fp32 fp32 (requested" in result.stderr  # the backend and form are always said


def test_infer_csv_and_glob(lean, images) -> None:
    result = kedge("infer", str(images / "nested" / "*.png"), "--model", str(lean), "--csv", "--quiet")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["path", "model", "label", *(f"p_{c}" for c in CLASSES), "backend", "form", "fallback",
                             "inside", "envelope_percentile", "envelope_distance", "nearest_source", "withheld"]
    assert len(rows) == 4 and all(r["label"] in CLASSES for r in rows)


def test_infer_errors_are_one_line(lean, tmp_path) -> None:
    missing = kedge("infer", str(tmp_path / "none.png"), "--model", str(lean))
    assert missing.returncode == 1 and f"kedge: error: {tmp_path / 'none.png'}: file not found" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = kedge("infer", str(tmp_path / "empty"), "--model", str(lean))
    assert empty.returncode == 1 and f"kedge: error: {tmp_path / 'empty'}: no images found" in empty.stderr


def test_infer_without_any_model(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    import kedge.runtime.bundle.shipped as shipped
    from kedge.cli import main

    monkeypatch.setattr(shipped, "MODELS_DIR", tmp_path)  # a checkout without the shipped models
    monkeypatch.delenv("KEDGE_MODEL", raising=False)
    result = CliRunner().invoke(main, ["infer", "x.png"])
    assert result.exit_code == 1
    assert result.output.startswith("kedge: error: no model: pass --model BUNDLE")


def test_batching_and_decode_threads_do_not_change_results(lean, images) -> None:
    from kedge.runtime.infer import Failure, Predictor
    from kedge.runtime.inputs.folders import expand_inputs

    paths = expand_inputs([images])
    with Predictor(load_bundle(lean), "onnxruntime", precision="fp32") as predictor:
        runs = [list(predictor.predict(paths, batch_size=b, workers=w)) for b, w in ((1, 0), (4, 2), (16, 4))]
    for run in runs:
        assert [r.path for r in run] == [str(p) for p in paths]  # input order, failures in place
        assert sum(isinstance(r, Failure) for r in run) == 1
    for a, b in zip(runs[0], runs[2], strict=True):
        if not isinstance(a, Failure):
            assert a.label == b.label
            assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-6)


# --- kedge bench and kedge info -----------------------------------------------------------

def test_bench_json_rows_ratios_and_chart(lean, tmp_path) -> None:
    chart = tmp_path / "bench.png"
    result = kedge("bench", "--model", str(lean), "--batch-sizes", "1,2", "--iterations", "3", "--warmup", "1",
                   "--plot", str(chart), "--json")
    assert result.returncode == 0, result.stderr
    assert "TENSORFLOW_LOADED=False" in result.stderr  # the lean bundle has no Keras model to compare
    report = json.loads(result.stdout)
    assert [m["model"] for m in report["models"]] == ["tiny"]
    rows = report["models"][0]["rows"]
    assert {(r["form"], r["batch_size"], r["mode"]) for r in rows} == {
        (f, b, m) for f in ("onnx-fp32", "onnx-int8") for b in (1, 2) for m in ("engine", "end_to_end")}
    from kedge.runtime.backends import runnable_pairs

    pairs = {(p.backend, p.form.name, p.precision) for p in runnable_pairs(load_bundle(lean))}
    timed = {(r["backend"], r["form"], r["precision"]) for r in rows if r["parity"] != "baseline"}
    assert timed == pairs  # every runnable pair gets its own row
    for key in {(r["mode"], r["batch_size"]) for r in rows}:
        assert sum(r["auto"] for r in rows if (r["mode"], r["batch_size"]) == key) == 1  # auto's pair is marked
    if any(r["backend"] == "openvino" for r in rows):  # OpenVINO's default is the baseline, on each ONNX file
        assert {r["form"] for r in rows if r["parity"] == "baseline"} == {"onnx-fp32", "onnx-int8"}
        assert {c["mode"] for c in report["models"][0]["auto_vs_openvino_default"]} == {"engine", "end_to_end"}
    for r in rows:
        assert {"backend", "form", "precision", "parity", "auto", "batch_size", "mode", "mean_ms", "p50_ms",
                "p90_ms", "p99_ms", "throughput"} <= set(r)
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput"] > 0 and r["vs_fastest"] >= 1.0
    for key in {(r["mode"], r["batch_size"]) for r in rows}:
        assert min(r["vs_fastest"] for r in rows if (r["mode"], r["batch_size"]) == key) == 1.0
    decode = report["preprocess"]
    assert [d["decode"] for d in decode] == ["full", "reduced (DCT scaling)"] and decode[1]["speedup"] > 0
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_bench_filters_and_bad_options(lean) -> None:
    result = kedge("bench", "--model", str(lean), "--precision", "int8", "--modes", "engine",
                   "--batch-sizes", "1", "--iterations", "2", "--warmup", "0")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("onnxruntime")]
    assert len(lines) == 1 and "onnx-int8" in lines[0]
    bad = kedge("bench", "--model", str(lean), "--batch-sizes", "0")
    assert bad.returncode == 1 and "--batch-sizes '0'" in bad.stderr
    none = kedge("bench", "--model", str(lean), "--backend", "tensorrt")
    assert none.returncode == 1 and "nothing to time" in none.stderr


def test_info_json(lean) -> None:
    result = kedge("info", "--model", str(lean), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["onnxruntime"]["would_use"][-1] == "CPUExecutionProvider"
    assert set(data["cpu"]["int8_features"]) >= {"avx2", "avx512_vnni"}
    assert data["engines"] == [] and data["preprocess_version"] == "2"
    text = kedge("info")
    assert text.returncode == 0 and "CPU INT8" in text.stdout and "ONNX Runtime" in text.stdout


# --- reduced JPEG decode ------------------------------------------------------------------

def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 EXIF segment holding only an Orientation tag after the SOI marker."""
    ifd = (b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01\x03\x00\x01\x00\x00\x00"
           + orientation.to_bytes(2, "little") + b"\x00\x00" + b"\x00\x00\x00\x00")
    payload = b"Exif\x00\x00" + ifd
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_reduced_jpeg_decode_is_close_to_the_full_decode_and_keeps_orientation() -> None:
    from kedge.runtime.checks.synthetic import knee_radiograph
    from kedge.runtime.inputs.preprocess import decode_grey, jpeg_reduction, preprocess

    image = cv2.resize(knee_radiograph(0.5, np.random.default_rng(3), size=1024), (2000, 1800))
    jpeg = with_exif_orientation(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(), 6)
    assert jpeg_reduction(2000, 1800) == 2 and jpeg_reduction(2800, 2700) == 4 and jpeg_reduction(1300, 2000) == 1
    reduced, scale = decode_grey(jpeg)
    assert reduced.shape == (900, 1000) and scale == 255  # 1/2 scale, stored orientation (EXIF 6 not applied)
    assert decode_grey(jpeg, reduced=False)[0].shape == (1800, 2000)
    difference = np.abs(preprocess(jpeg) - preprocess(jpeg, reduced=False))
    assert difference.mean() < 0.001, difference.mean()
    small = cv2.imencode(".jpg", cv2.resize(image, (1300, 1200)))[1].tobytes()
    assert np.array_equal(preprocess(small), preprocess(small, reduced=False))  # under 1344 px: unchanged


# --- shipping and the model card ----------------------------------------------------------

def test_ship_carries_chosen_forms_and_the_card(lean, synthetic_data, tmp_path) -> None:
    import shutil

    from kedge.export.parity import parity_for_bundle
    from kedge.export.ship import ship_bundle
    from kedge.runtime.bundle.manifest import new_bundle, sha256_file

    source = tmp_path / "source"
    shutil.copytree(lean, source)
    unchecked = load_bundle(source).manifest  # as trained and exported without --data: no parity yet
    new_bundle(source, {k: v for k, v in unchecked.items() if k not in ("files", "schema", "parity")})
    with pytest.raises(KedgeError, match="no parity record"):
        ship_bundle(load_bundle(source), tmp_path / "early", ["onnx-int8"])
    assert parity_for_bundle(load_bundle(source), synthetic_data, reference="onnx-fp32", progress=False)["passed"]
    failed = tmp_path / "failed"  # the same bundle, had its INT8 row failed
    shutil.copytree(source, failed)
    manifest = load_bundle(failed).manifest
    for row in manifest["parity"]["rows"]:
        if row["form"] == "onnx-int8":
            row.update(passed=False, problems=["agreement 97.22% < 98.0%"])
    new_bundle(failed, {k: v for k, v in manifest.items() if k not in ("files", "schema")})
    with pytest.raises(KedgeError, match=r"only forms that passed parity ship; onnx-int8 FAILED \(agreement 97"):
        ship_bundle(load_bundle(failed), tmp_path / "refused", ["onnx-int8"])
    with pytest.raises(KedgeError, match="has no onnx-fp16"):
        ship_bundle(load_bundle(source), tmp_path / "none", ["onnx-fp16"])
    shipped = tmp_path / "shipped"
    manifest = ship_bundle(load_bundle(source), shipped, ["onnx-int8"],
                           data_source="synthetic knees made by the tests").manifest
    assert manifest["card"]["training_data"]["source"] == "synthetic knees made by the tests"
    assert not any((tmp_path / n).exists() for n in ("early", "none", "refused"))  # nothing half-written
    assert set(manifest["artifacts"]) == {"onnx_int8_cpu"}  # the small provenance files it has (none here)
    assert not (shipped / "model.onnx").exists()
    left = manifest["shipped"]["left_out"]["onnx_fp32"]
    assert left["sha256"] == sha256_file(source / "model.onnx") and left["bytes"] > 0
    assert all(sha256_file(shipped / rel) == digest for rel, digest in manifest["files"].items())
    assert manifest["parity"]["passed"] and "Research use only" in manifest["card"]["limitations"][0]
    text = kedge("card", str(shipped))
    assert text.returncode == 0, text.stderr
    for expected in ("tiny: Normal, Osteopenia, Osteoporosis", "Parity against onnx-fp32", "not shipped",
                     "Known limitations", "model.int8.cpu.onnx"):
        assert expected in text.stdout
    with pytest.raises(KedgeError, match=r"model.onnx \(onnx_fp32\) was left out when this bundle was shipped"):
        parity_for_bundle(load_bundle(shipped), synthetic_data, reference="onnx-fp32", progress=False)
    both = tmp_path / "both"  # with its FP32 reference, parity runs and records its rows in the shipped bundle
    ship_bundle(load_bundle(source), both, ["onnx-fp32", "onnx-int8"])
    before = load_bundle(both).manifest
    (both / "model.keras").write_bytes(b"beside the bundle, not part of it")
    result = parity_for_bundle(load_bundle(both), synthetic_data, reference="onnx-fp32", progress=False)
    after = load_bundle(both).manifest
    assert result["recorded"] is True and after["parity"]["rows"] == result["rows"]
    assert after["files"] == before["files"]  # only kedge.json changed: the sha256 bookkeeping stays right
    assert {k: v for k, v in after.items() if k != "parity"} == {k: v for k, v in before.items() if k != "parity"}
    result = kedge("infer", str(next(synthetic_data.rglob("*.png"))), "--model", str(shipped), "--json")
    assert result.returncode == 0 and json.loads(result.stdout)[0]["form"] == "onnx-int8"


# --- the models shipped in runtime/models --------------------------------------------------

def shipped_or_skip() -> list[Path]:
    from kedge.runtime.bundle.shipped import shipped_bundles

    bundles = shipped_bundles()
    if not bundles:
        pytest.skip("no shipped models in runtime/models")
    return bundles


def test_shipped_models_are_intact_and_within_budget() -> None:
    from kedge.runtime.bundle.manifest import sha256_file

    bundles = shipped_or_skip()
    assert [b.name for b in bundles] == ["resnet50-gru", "knee-cnn"]
    total = sum(p.stat().st_size for b in bundles for p in b.rglob("*") if p.is_file())
    assert total <= 200_000_000, total  # issue 18: the whole package at most 200 MB
    for folder in bundles:
        manifest = load_bundle(folder).manifest
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"kedge.json"}
        assert on_disk == set(manifest["files"])
        assert all(sha256_file(folder / rel) == digest for rel, digest in manifest["files"].items())
        rows = {row["form"]: row for row in manifest["parity"]["rows"]}
        assert manifest["parity"]["split"] == "test"
        assert all(rows[form]["passed"] for form in manifest["shipped"]["forms"])  # only forms that passed ship
        if any(form.startswith("onnx-int8") for form in manifest["shipped"]["forms"]):
            assert manifest["calibration"]["split"] == "train"  # test images never calibrate
        assert manifest["card"]["limitations"] and manifest["metrics"]["test"]["by_format"]


def test_every_shipped_model_answers_through_a_pair_checked_on_this_machine(tmp_path, monkeypatch) -> None:
    """What `kedge infer` does first on a new machine: each shipped model's pairs run its golden
    set here. Each model must carry its float form (the fallback), every shipped file must have
    stored golden outputs, and `auto` must end on a pair that passed both checks (an INT8 pair
    where the model ships INT8, or the float form, saying why it fell back), never an unchecked one."""
    from kedge.runtime.bundle.forms import form
    from kedge.runtime.checks.choice import choose

    monkeypatch.setenv("KEDGE_CACHE", str(tmp_path))  # a fresh machine: nothing cached
    for folder in shipped_or_skip():
        bundle = load_bundle(folder)
        shipped = bundle.section("shipped")["forms"]
        assert "onnx-fp16" in shipped, folder.name
        golden = bundle.golden
        assert golden is not None and golden["version"] >= 2, folder.name
        for name in shipped:  # stored outputs of exactly the shipped bytes
            assert golden["files"][name] == bundle.sha256(form(name).artifact) and name in golden["outputs"], name
        choice = choose(bundle)
        assert choice.verified, (folder.name, choice.reason)
        if any(form(name).precision == "int8" for name in shipped):
            assert choice.pair.precision == "int8" or (choice.fallback and "FALLBACK" in choice.reason), choice.reason
        else:
            assert choice.pair.form.name == "onnx-fp16" and not choice.fallback, choice.reason


def test_each_shipped_model_records_the_rebuild_its_recipe_runs() -> None:
    """`kedge rebuild NAME` must remake what ships: the commands in the shipped kedge.json are
    the recipe's, export calibrates INT8 exactly when INT8 forms ship, and the card says where
    the data came from in the recipe's words."""
    from kedge.train.rebuild import RECIPES, commands

    for folder in shipped_or_skip():
        bundle = load_bundle(folder)
        recorded = bundle.section("rebuild")["commands"]
        canonical = commands(folder.name, Path("../shared/data"), Path("runs") / folder.name,
                             Path("runtime/models") / folder.name)
        assert recorded == ["kedge " + shlex.join(step) for step in canonical], folder.name
        ships_int8 = any(name.startswith("onnx-int8") for name in bundle.section("shipped")["forms"])
        assert ("--int8" in canonical[1]) == ships_int8, folder.name
        assert bundle.section("card")["training_data"]["source"] == RECIPES[folder.name].data_source, folder.name


def test_infer_without_model_runs_both_shipped_models(synthetic_data) -> None:
    shipped_or_skip()
    image = str(next(synthetic_data.rglob("*.png")))
    result = kedge("infer", image, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == ["resnet50-gru", "knee-cnn"]
    assert list(rows[0]["probabilities"]) == ["Normal", "Osteoporosis"] and len(rows[1]["probabilities"]) == 3
    text = kedge("infer", image)
    assert text.stdout.startswith(f"{image}: resnet50-gru ") and "; knee-cnn " in text.stdout


# --- the audit trail ----------------------------------------------------------------------

def test_audit_trail_survives_a_kill_and_appends(lean, synthetic_data, tmp_path) -> None:
    import hashlib
    import time

    audit = tmp_path / "audit.jsonl"
    many = tmp_path / "many"  # enough readings that the kill lands part-way on any machine
    many.mkdir()
    sources = sorted(synthetic_data.rglob("*.png"))
    for i in range(600):
        (many / f"{i:04d}.png").write_bytes(sources[i % len(sources)].read_bytes())
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in sources}
    process = subprocess.Popen([sys.executable, "-m", "kedge.cli", "infer", str(many), "--model",
                                str(lean), "--audit", str(audit), "--batch-size", "1", "--workers", "0", "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not audit.exists() or audit.read_bytes().count(b"\n") < 5):
        time.sleep(0.05)
    process.kill()  # SIGKILL mid-run: no cleanup code runs
    process.wait(timeout=30)
    data = audit.read_bytes()
    assert data.endswith(b"\n")  # whole lines only
    entries = [json.loads(line) for line in data.splitlines()]
    assert 5 <= len(entries) < 600  # killed part-way
    from kedge.runtime.checks.choice import choose

    auto = choose(load_bundle(lean)).pair  # what infer runs by itself
    runtime = {"onnxruntime": "ONNX Runtime ", "openvino": "OpenVINO "}[auto.backend]
    for entry in entries:
        assert set(entry) == {"time_utc", "input_sha256", "model", "form", "form_sha256", "backend", "precision",
                              "verified", "runtime", "label", "probabilities", "kedge", *GATE_FIELDS, "withheld"}
        assert entry["input_sha256"] in digests and entry["model"] == "tiny" and entry["form"] == auto.form.name
        assert entry["form_sha256"] == load_bundle(lean).manifest["files"][auto.form.file]
        assert entry["backend"] == auto.backend and entry["precision"] == auto.precision and entry["verified"]
        assert entry["runtime"].startswith(runtime) and entry["time_utc"].endswith("+00:00")
    one = next(synthetic_data.rglob("*.png"))
    again = kedge("infer", str(one), "--model", str(lean), "--audit", str(audit), "--quiet")
    assert again.returncode == 0, again.stderr
    assert audit.read_bytes().startswith(data)  # appended, never rewritten
    assert len(audit.read_bytes().splitlines()) == len(entries) + 1


def test_audit_file_that_cannot_be_opened(lean, synthetic_data, tmp_path) -> None:
    result = kedge("infer", str(next(synthetic_data.rglob("*.png"))), "--model", str(lean), "--audit",
                   str(tmp_path / "no" / "such" / "dir" / "audit.jsonl"))
    assert result.returncode == 1 and "cannot open the audit file" in result.stderr and "Traceback" not in result.stderr


def test_full_decode_flag_uses_the_exact_jpeg_decode(lean, tmp_path) -> None:
    from kedge.runtime.backends.onnxruntime import OnnxRuntimeSession
    from kedge.runtime.checks.synthetic import knee_radiograph
    from kedge.runtime.inputs.preprocess import preprocess

    image = cv2.resize(knee_radiograph(0.4, np.random.default_rng(5), size=512), (2000, 1700))
    path = tmp_path / "large.jpg"
    cv2.imwrite(str(path), image)
    with OnnxRuntimeSession(lean / "model.onnx") as backend:
        exact, fast = (backend.infer(preprocess(path, reduced=r)[None])[0] for r in (False, True))
    assert not np.array_equal(exact, fast)  # the two decodes really differ on a 2000 px JPEG
    for flag, expected in ((["--full-decode"], exact), ([], fast)):
        result = kedge("infer", str(path), "--model", str(lean), "--precision", "fp32", "--json", *flag)
        assert result.returncode == 0, result.stderr
        got = np.array(list(json.loads(result.stdout)[0]["probabilities"].values()))
        assert np.allclose(got, expected, atol=1e-6), flag
