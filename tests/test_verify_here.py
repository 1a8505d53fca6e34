"""Verification where a form runs: the golden check on this machine, the float fallback,
parity rows bound to the file they judged, and the per-machine cache (issue 18).

The INT8 saturation measured on CPUs without VNNI moved probabilities by 0.11-0.19.
This machine may have VNNI, so the failing form is made the other way round: its
stored golden outputs are moved by the smallest error measured (0.11), which the
check must see exactly as it would see the form moving by that much."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from leanbundle import make_lean_bundle

from kedge.runtime.bundle.manifest import load_bundle
from kedge.runtime.errors import KedgeError

SATURATION_ERROR = 0.11  # the smallest max |dp| of the 8-bit INT8 files on an AVX2-only EPYC


@pytest.fixture(scope="module")
def checked(tmp_path_factory, small_data) -> Path:
    """A tiny bundle (FP32 and CPU INT8 ONNX) with parity rows and a golden set."""
    return make_lean_bundle(tmp_path_factory.mktemp("here") / "tiny", small_data)


@pytest.fixture
def bundle_dir(checked, tmp_path, monkeypatch) -> Path:
    """A private copy, and a fresh per-machine cache, so nothing carries over between tests."""
    monkeypatch.setenv("KEDGE_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "tiny"
    shutil.copytree(checked, copy)
    return copy


def kedge(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kedge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def shift(outputs: list[list[float]], amount: float) -> list[list[float]]:
    """Move `amount` of probability from each image's top class to another class."""
    p = np.array(outputs, np.float64)
    top = p.argmax(1)
    other = (top + 1) % p.shape[1]
    moved = np.minimum(amount, p[np.arange(len(p)), top])
    p[np.arange(len(p)), top] -= moved
    p[np.arange(len(p)), other] += moved
    return p.round(6).tolist()


def test_golden_images_span_every_answer_and_a_range_of_margins() -> None:
    from kedge.runtime.checks.golden import select_spread

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (96, 3)) + np.array([2.0, 0.0, -1.0])  # class 0 dominates the pool
    pool = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    chosen = select_spread(pool, 24)
    answers = pool[chosen].argmax(1)
    top = np.sort(pool[chosen], 1)
    margins = top[:, -1] - top[:, -2]
    assert len(chosen) == 24 == len(set(chosen))
    assert set(answers) == set(pool.argmax(1))  # every answer of the pool, the rare ones too
    assert min(np.bincount(answers)) >= 6  # classes take turns, not pool shares
    assert margins.min() < 0.1 and margins.max() > 0.6  # near ties to confident answers


def test_the_golden_set_regenerates_without_train_and_holds_distinct_outputs(checked) -> None:
    from kedge.runtime.checks.golden import regenerate

    golden = load_bundle(checked).manifest["golden"]
    images = regenerate(golden)
    assert images.pixel_sha256 == golden["pixel_sha256"]
    outputs = np.array(golden["outputs"]["onnx-int8"])
    assert len({tuple(row) for row in outputs.round(4)}) == len(outputs)  # not one output repeated
    assert set(golden["files"]) == {"onnx-fp32", "onnx-int8"}


def test_a_form_off_by_the_saturation_error_is_never_used_and_auto_falls_back(bundle_dir, small_data) -> None:
    from kedge.runtime.checks.choice import choose

    good = choose(load_bundle(bundle_dir))
    assert good.pair.precision == "int8" and good.verified and not good.fallback
    bundle = load_bundle(bundle_dir)
    golden = dict(bundle.manifest["golden"])
    golden["outputs"] = {**golden["outputs"], "onnx-int8": shift(golden["outputs"]["onnx-int8"], SATURATION_ERROR)}
    bundle.update(golden=golden)

    choice = choose(load_bundle(bundle_dir))
    assert choice.pair.precision == "fp32" and choice.fallback and choice.verified
    assert choice.reason.startswith("FALLBACK to the float form: no INT8 pair passed its golden check")
    with pytest.raises(KedgeError, match="passed parity at export but FAILED its golden check on this machine"):
        choose(load_bundle(bundle_dir), "onnxruntime", "int8")
    forced = choose(load_bundle(bundle_dir), "onnxruntime", "int8", allow_unverified=True)
    assert forced.pair.precision == "int8" and not forced.verified

    image = next(small_data.rglob("*.png"))
    for quiet in ((), ("--quiet",)):
        result = kedge("infer", image, "--model", bundle_dir, "--json", *quiet)
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert rows[0]["form"] == "onnx-fp32" and rows[0]["fallback"].startswith("FALLBACK")
        assert result.stderr.count("FALLBACK to the float form") == 1
    refused = kedge("infer", image, "--model", bundle_dir, "--backend", "onnxruntime", "--precision", "int8")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1


def test_a_small_kernel_difference_still_passes(bundle_dir) -> None:
    """The tolerance is not zero: another runtime's INT8 rounding (0.027 measured) must pass."""
    from kedge.runtime.checks.choice import choose

    bundle = load_bundle(bundle_dir)
    golden = dict(bundle.manifest["golden"])
    golden["outputs"] = {**golden["outputs"], "onnx-int8": shift(golden["outputs"]["onnx-int8"], 0.03)}
    bundle.update(golden=golden)
    assert choose(load_bundle(bundle_dir)).pair.precision == "int8"


def test_the_check_runs_once_per_machine(bundle_dir, monkeypatch) -> None:
    from kedge.runtime.checks import choice as choice_module

    calls = []
    measure = choice_module._measure
    monkeypatch.setattr(choice_module, "_measure", lambda *a, **k: calls.append(1) or measure(*a, **k))
    first = choice_module.choose(load_bundle(bundle_dir))
    again = choice_module.choose(load_bundle(bundle_dir))
    assert len(calls) == 1 and first.pair == again.pair
    assert "measured just now" in first.reason and "measured earlier on this machine" in again.reason


def test_pairs_about_as_fast_are_picked_in_a_fixed_order_whatever_the_load() -> None:
    from kedge.runtime.backends import pair
    from kedge.runtime.checks.choice import Here, _fastest

    a, b = pair("onnxruntime", "onnx-int8"), pair("openvino", "onnx-int8")
    for ms_a, ms_b in ((10.0, 9.7), (9.7, 10.0), (10.3, 9.9)):  # the same pair, loaded or not
        here = {a.key: Here(True, "", ms_a), b.key: Here(True, "", ms_b)}
        assert _fastest([a, b], here, [], named=False).pair == a
    here = {a.key: Here(True, "", 10.0), b.key: Here(True, "", 9.0)}  # 10 % faster wins
    assert _fastest([a, b], here, [], named=False).pair == b


def test_a_reexport_without_labelled_data_leaves_the_new_files_unchecked(bundle_dir, small_data, tmp_path) -> None:
    from kedge.runtime.backends import pair
    from kedge.runtime.checks.choice import choose
    from kedge.runtime.checks.parity import UNCHECKED, status

    flat = tmp_path / "flat"  # no class folders: export has no labelled folder to run parity on
    flat.mkdir()
    for image in small_data.rglob("*.png"):
        shutil.copy(image, flat / image.name)
    before = load_bundle(bundle_dir).manifest["files"]["model.int8.cpu.onnx"]
    result = kedge("export", bundle_dir, "--int8", "--calib", flat, "--calib-size", "5", "--seed", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest["files"]["model.int8.cpu.onnx"] != before  # new bytes, no parity run on them
    state, detail = status(bundle, pair("onnxruntime", "onnx-int8"))
    assert state == UNCHECKED and "changed since its parity row" in detail
    assert choose(bundle).pair.precision != "int8"
    with pytest.raises(KedgeError, match="was never parity-checked"):
        choose(bundle, "onnxruntime", "int8")


def test_a_reexport_killed_during_parity_leaves_the_new_files_unchecked(bundle_dir, synthetic_data) -> None:
    from kedge.runtime.backends import pair
    from kedge.runtime.checks.choice import choose
    from kedge.runtime.checks.parity import UNCHECKED, status

    manifest = bundle_dir / "kedge.json"
    before = json.loads(manifest.read_text())["files"]["model.int8.cpu.onnx"]
    process = subprocess.Popen([sys.executable, "-m", "kedge.cli", "export", str(bundle_dir), "--int8", "--calib",
                                str(synthetic_data), "--calib-size", "9", "--seed", "4", "--data",
                                str(synthetic_data), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:  # the new INT8 files are recorded before parity starts; parity on 180 images takes seconds
            if json.loads(manifest.read_text())["files"]["model.int8.cpu.onnx"] != before:
                break
        except (ValueError, KeyError):
            pass
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the export ended before it could be killed during parity"
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest["files"]["model.int8.cpu.onnx"] != before
    assert status(bundle, pair("onnxruntime", "onnx-int8"))[0] == UNCHECKED
    assert choose(bundle).pair.precision != "int8"


@pytest.mark.parametrize("field, value", [("passed", "false"), ("passed", 1), ("n", "24"), ("agreement", [1])])
def test_parity_rows_are_type_checked_at_load(bundle_dir, field, value) -> None:
    data = json.loads((bundle_dir / "kedge.json").read_text())
    data["parity"]["rows"][1][field] = value
    (bundle_dir / "kedge.json").write_text(json.dumps(data))
    with pytest.raises(KedgeError, match=rf"parity.rows\[1\].{field} must be"):
        load_bundle(bundle_dir)
    result = kedge("infer", bundle_dir / "model.onnx", "--model", bundle_dir)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_shipped_bundle_keeps_a_float_form_that_parity_and_the_fallback_use(bundle_dir, small_data,
                                                                              tmp_path) -> None:
    """Shipped without its FP32 file, a bundle still has a reference on a lean install (its
    FP16-stored float form, widened to FP32 by ONNX Runtime) and a form to fall back to."""
    from kedge.runtime.checks.choice import choose

    assert kedge("export", bundle_dir, "--fp16", "--quiet", "--data", small_data).returncode == 0
    shipped = tmp_path / "shipped"
    result = kedge("ship", bundle_dir, "--out", shipped, "--forms", "onnx-fp16,onnx-int8")
    assert result.returncode == 0, result.stderr
    assert not (shipped / "model.onnx").exists()
    parity = kedge("parity", shipped, "--data", small_data, "--json")
    assert parity.returncode == 0, parity.stderr
    rows = json.loads(parity.stdout)["rows"]
    assert rows[0]["form"] == "onnx-fp16" and rows[0]["reference"]
    assert "onnx-int8" in {r["form"] for r in rows[1:]} and all(r["passed"] for r in rows)
    assert json.loads(parity.stdout)["recorded"]  # its recorded parity was against the FP32 ONNX, not Keras
    bundle = load_bundle(shipped)  # as shipped from a desktop: parity recorded against Keras
    bundle.update(parity={**bundle.manifest["parity"], "reference": "keras"})
    again = kedge("parity", shipped, "--data", small_data)
    assert again.returncode == 0 and "not recorded: the bundle's recorded parity is against Keras" in again.stdout
    assert load_bundle(shipped).manifest["parity"]["reference"] == "keras"

    bundle = load_bundle(shipped)
    golden = dict(bundle.manifest["golden"])
    golden["outputs"] = {**golden["outputs"], "onnx-int8": shift(golden["outputs"]["onnx-int8"], SATURATION_ERROR)}
    bundle.update(golden=golden)
    choice = choose(load_bundle(shipped))
    assert choice.fallback and choice.pair.form.name == "onnx-fp16"


def test_golden_images_another_opencv_draws_differently_leave_the_pair_unchecked_and_say_so(bundle_dir) -> None:
    """Not a verdict on the form: the pair runs, but the choice is marked unverified and says why."""
    from kedge.runtime.checks.choice import choose

    bundle = load_bundle(bundle_dir)
    golden = {**bundle.manifest["golden"], "pixel_sha256": ["0" * 64] * len(bundle.manifest["golden"]["indices"])}
    bundle.update(golden=golden)
    choice = choose(load_bundle(bundle_dir))
    assert not choice.verified and "could not be drawn again here (another OpenCV build" in choice.reason
