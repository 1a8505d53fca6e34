"""INT8 on x86 CPUs without VNNI, on this machine's real kernels.

`ONEDNN_MAX_CPU_ISA=AVX2` makes OpenVINO's CPU plugin use its AVX2 integer kernels, which
multiply uint8 by int8 in pairs summed into saturating int16, as a CPU without VNNI
does (SPEC 2c). No mock: each run is a fresh OpenVINO process with that switch.

- The control shows the switch reaches the kernels: a Q/DQ file with 8-bit weights answers
  differently there than in exact arithmetic (ONNX Runtime with every graph optimisation
  off runs Q/DQ as float ops), and the same file with 7-bit weights (ONNX Runtime's
  `reduce_range`, what calibration/qdq.py uses) answers exactly.
- The shipped INT8 files (7-bit weights) answer their golden images on the AVX2 kernels
  exactly as on this CPU's own VNNI kernels, so what their golden check saw here is what an
  AVX2-only CPU computes (on a CPU without VNNI both are the AVX2 kernels: nothing to compare).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

if platform.machine().lower() not in ("x86_64", "amd64"):
    pytest.skip("AVX2 kernels are x86 only", allow_module_level=True)

RUN_OPENVINO = """
import sys, numpy as np, openvino as ov
compiled = ov.Core().compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
np.save(sys.argv[3], compiled(np.load(sys.argv[2]))[0])
"""


def openvino_outputs(model: Path, x: np.ndarray, tmp_path: Path, isa: str | None) -> np.ndarray:
    """`model` on `x` in a fresh OpenVINO process, limited to `isa` (None: this CPU's own)."""
    inputs, outputs = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(inputs, x)
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    subprocess.run([sys.executable, "-c", RUN_OPENVINO, str(model), str(inputs), str(outputs)], env=env, check=True)
    return np.load(outputs)


def exact_outputs(model: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def int8_features() -> dict[str, bool]:
    from kedge.runtime.cpu import cpu_info

    return cpu_info()["int8_features"]


VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")


@pytest.fixture(scope="module")
def avx2() -> None:
    if not int8_features().get("avx2"):
        pytest.skip("this CPU has no AVX2")


def test_eight_bit_weights_saturate_on_avx2_kernels_and_seven_bit_ones_do_not(avx2, tmp_path) -> None:
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    channels, outputs = 64, 8
    # positive weights and bright inputs: pairs of products near 255 x 127 overflow int16
    weights = rng.uniform(0.5, 1.0, (outputs, channels, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["nchw", "w", "b"], ["conv"]),
         helper.make_node("Relu", ["conv"], ["relu"]),
         helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
         helper.make_node("Flatten", ["pool"], ["out"])],
        "pairs", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 8, 8, channels])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, outputs])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.zeros(outputs, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "float.onnx")
    x = rng.uniform(0.0, 1.0, (16, 8, 8, channels)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"image": x[i:i + 1]} for i in range(len(x))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    error, here = {}, {}
    for bits in (7, 8):
        path = tmp_path / f"int8.{bits}bit.onnx"
        quantize_static(str(tmp_path / "float.onnx"), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=bits == 7, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, extra_options={"WeightSymmetric": True})
        exact = exact_outputs(path, x)
        scale = np.abs(exact).max()
        error[bits] = float(np.abs(openvino_outputs(path, x, tmp_path, "AVX2") - exact).max() / scale)
        here[bits] = float(np.abs(openvino_outputs(path, x, tmp_path, None) - exact).max() / scale)
    assert error[8] > 0.02, error  # the switch reached the kernels: they saturate (7.8 % of the scale here)
    assert error[7] < 1e-6, error
    if any(int8_features().get(f) for f in VNNI):  # with VNNI this CPU's own kernels are exact: the ISA is the cause
        assert here[8] < 1e-6 and here[7] < 1e-6, here


@pytest.mark.parametrize("name", ["resnet50-gru", "knee-cnn"])
def test_shipped_int8_files_answer_the_same_on_avx2_kernels(avx2, tmp_path, name) -> None:
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.bundle.shipped import MODELS_DIR
    from kedge.runtime.checks.golden import GoldenBatch

    if not any(int8_features().get(f) for f in VNNI):
        pytest.skip("no VNNI here: this CPU's own kernels are the AVX2 ones")
    folder = MODELS_DIR / name
    if not (folder / "kedge.json").is_file():
        pytest.skip(f"no shipped {name}")
    bundle = load_bundle(folder)
    x = GoldenBatch(bundle.golden).tensors  # the images each machine's golden check runs
    files = [bundle.file(key) for key in ("onnx_int8_cpu", "onnx_int8_qdq") if bundle.has(key)]
    assert files, f"{name} ships no INT8 file"
    for path in files:
        here = openvino_outputs(path, x, tmp_path, None)
        avx2_only = openvino_outputs(path, x, tmp_path, "AVX2")
        assert np.abs(here - avx2_only).max() <= 1e-6, path.name
