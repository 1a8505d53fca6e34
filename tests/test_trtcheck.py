"""`kedge check-trt`: each kind of violation planted in a small ONNX graph is caught,
a clean graph gives no finding, and the shipped TensorRT-bound files pass."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from kedge.export.trtcheck import check_model  # noqa: E402
from kedge.runtime.bundle.manifest import new_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _init(name: str, array: np.ndarray):
    return numpy_helper.from_array(array, name)


def qdq_graph(zero: int = 0, zero_type=np.int8, weight_axis: int = 0, float_weight: bool = False,
              residual_quantized: bool = True, dq_into_softmax: bool = False, batch="batch",
              reshape_batch: int | None = None, opset: int = 17):
    """A clean TensorRT Q/DQ graph (Conv -> Relu -> residual Add -> pool -> Gemm -> Softmax),
    with one violation planted by the arguments."""
    c = 4
    rng = np.random.default_rng(0)
    inits = [
        _init("s", np.array(0.02, np.float32)), _init("z", np.array(zero, zero_type)),
        _init("zc", np.zeros(c, np.int8)),
        _init("w_q", rng.integers(-100, 100, (c, 3, 3, 3)).astype(np.int8)),
        _init("w_s", np.full(c if weight_axis == 0 else 3, 0.01, np.float32)),
        _init("w_z", np.zeros(c if weight_axis == 0 else 3, np.int8)),
        _init("w_f", rng.normal(size=(c, 3, 3, 3)).astype(np.float32)),
        _init("fc_q", rng.integers(-100, 100, (c, 2)).astype(np.int8)),
        _init("fc_s", np.full(2, 0.01, np.float32)), _init("fc_z", np.zeros(2, np.int8)),
        _init("shape", np.array([reshape_batch or -1, c], np.int64)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "s", "z"], ["x_q"], name="in_q"),
        helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x"], name="in_dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_dq", axis=weight_axis),
        helper.make_node("Conv", ["x", "w_f" if float_weight else "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("QuantizeLinear", ["relu", "s", "z"], ["r_q"], name="relu_q"),
        helper.make_node("DequantizeLinear", ["r_q", "s", "z"], ["r"], name="relu_dq"),
        helper.make_node("Conv", ["r", "w"], ["conv2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["conv2", "s", "z"], ["c2_q"], name="conv2_q"),
        helper.make_node("DequantizeLinear", ["c2_q", "s", "z"], ["c2"], name="conv2_dq"),
        helper.make_node("Add", ["c2", "r" if residual_quantized else "relu"], ["sum"], name="residual_add"),
        helper.make_node("GlobalAveragePool", ["sum"], ["pool"], name="pool"),
        helper.make_node("Reshape", ["pool", "shape"], ["flat"], name="flatten"),
        helper.make_node("QuantizeLinear", ["flat", "s", "z"], ["f_q"], name="flat_q"),
        helper.make_node("DequantizeLinear", ["f_q", "s", "z"], ["f"], name="flat_dq"),
        helper.make_node("DequantizeLinear", ["fc_q", "fc_s", "fc_z"], ["fc"], name="fc_dq", axis=1),
        helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc"),
    ]
    if dq_into_softmax:
        nodes += [helper.make_node("QuantizeLinear", ["logits", "s", "z"], ["l_q"], name="logits_q"),
                  helper.make_node("DequantizeLinear", ["l_q", "s", "z"], ["l"], name="logits_dq"),
                  helper.make_node("Softmax", ["l"], ["probabilities"], name="softmax")]
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def findings(model, tmp_path, trt="10.3", **kwargs):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return check_model(path, trt, **kwargs)


def rules(found):
    return {(f.rule, f.node) for f in found}


def test_clean_qdq_graph_has_no_finding(tmp_path) -> None:
    model = qdq_graph()
    onnx.checker.check_model(model)
    assert findings(model, tmp_path, "10.3") == []
    assert findings(model, tmp_path, "11") == []


@pytest.mark.parametrize(("planted", "rule", "node", "severity"), [
    (dict(zero=3), "qdq-zero-point", "in_q", "error"),
    (dict(zero_type=np.uint8), "qdq-type", "in_q", "error"),
    (dict(weight_axis=1), "qdq-weight-axis", "w_dq", "error"),
    (dict(float_weight=True), "qdq-placement", "conv", "warning"),
    (dict(residual_quantized=False), "qdq-residual-add", "residual_add", "warning"),
    (dict(dq_into_softmax=True), "qdq-float-consumer", "softmax", "warning"),
    (dict(batch=1), "batch-axis", "image", "error"),
    (dict(reshape_batch=8), "batch-axis", "flatten", "error"),
    (dict(opset=22), "opset", "(model)", "error"),
])
def test_each_planted_violation_is_caught(tmp_path, planted, rule, node, severity) -> None:
    found = findings(qdq_graph(**planted), tmp_path, "10.3")
    hits = [f for f in found if f.rule == rule and f.node == node]
    assert hits, f"{rule} on {node} not caught; found {[f.line() for f in found]}"
    assert hits[0].severity == severity
    assert f"[{rule}]" in hits[0].line() and repr(node) in hits[0].line()


def test_opset_limit_differs_by_tensorrt_version(tmp_path) -> None:
    model = qdq_graph(opset=22)
    assert ("opset", "(model)") in rules(findings(model, tmp_path, "10.3"))
    assert ("opset", "(model)") not in rules(findings(model, tmp_path, "11"))


def gru_graph(**attributes):
    hidden = 4
    rng = np.random.default_rng(1)
    directions = 2 if attributes.get("direction") == "bidirectional" else 1
    inits = [_init("W", rng.normal(size=(directions, 3 * hidden, 5)).astype(np.float32)),
             _init("R", rng.normal(size=(directions, 3 * hidden, hidden)).astype(np.float32))]
    node = helper.make_node("GRU", ["seq", "W", "R"], ["", "h"], name="gru", hidden_size=hidden, **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("seq", TensorProto.FLOAT, [7, "batch", 5])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("attributes", "expect"), [
    (dict(activations=["Sigmoid", "Tanh"], linear_before_reset=1), None),  # the shipped GRU's attributes
    (dict(layout=1), "layout=1"),
    (dict(activations=["Sigmoid", "Affine"]), "['Affine'] not among"),
    (dict(direction="bidirectional", activations=["Sigmoid", "Tanh", "Sigmoid", "Relu"]), "different activations"),
])
def test_gru_attributes(tmp_path, attributes, expect) -> None:
    found = [f for f in findings(gru_graph(**attributes), tmp_path, "11") if f.rule == "op-attribute"]
    if expect is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].node == "gru" and expect in found[0].message


def test_unsupported_and_foreign_operators(tmp_path) -> None:
    nodes = [helper.make_node("Det", ["x"], ["d"], name="det"),
             helper.make_node("FancyOp", ["x"], ["y"], name="plugin", domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 2])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    found = rules(findings(model, tmp_path, "10.3"))
    assert {("op-unsupported", "det"), ("op-unsupported", "plugin")} <= found


def fp16_graph(io_type=TensorProto.FLOAT, mixed: bool = False):
    nodes = [helper.make_node("Cast", ["x"], ["h"], name="to_half", to=TensorProto.FLOAT16),
             helper.make_node("Add", ["h", "x" if mixed else "h"], ["s"], name="add"),
             helper.make_node("Cast", ["s"], ["y"], name="to_float", to=io_type)]
    if io_type == TensorProto.FLOAT16:
        nodes = [helper.make_node("Add", ["x", "x"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", io_type, ["batch", 4])],
                              [helper.make_tensor_value_info("y", io_type, ["batch", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_strong_typing_rules_apply_to_tensorrt_11_only(tmp_path) -> None:
    assert findings(fp16_graph(), tmp_path, "11") == []
    io = rules(findings(fp16_graph(io_type=TensorProto.FLOAT16), tmp_path, "11"))
    assert {("strong-typing-io", "x"), ("strong-typing-io", "y")} <= io
    mixed = findings(fp16_graph(mixed=True), tmp_path, "11")
    assert ("strong-typing-mixed", "add") in rules(mixed)
    assert "float16 and float32" in [f for f in mixed if f.rule == "strong-typing-mixed"][0].message
    assert findings(fp16_graph(mixed=True), tmp_path, "10.3") == []  # TensorRT 10 builds it weakly typed


def _bundle_with(tmp_path: Path, model) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    onnx.save(model, bundle / "model.int8.qdq.onnx")
    new_bundle(bundle, {"model": {"name": "tiny", "classes": ["a", "b"]},
                            "artifacts": {"onnx_int8_qdq": "model.int8.qdq.onnx"}})
    return bundle


def _kedge(*args):
    return subprocess.run([sys.executable, "-m", "kedge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_cli_one_line_per_finding_and_exit_status(tmp_path) -> None:
    bad = _kedge("check-trt", _bundle_with(tmp_path, qdq_graph(zero=5)), "--trt", "10.3")
    assert bad.returncode == 1, bad.stderr
    line = [x for x in bad.stdout.splitlines() if "[qdq-zero-point]" in x]
    assert line and line[0].startswith("model.int8.qdq.onnx: error [qdq-zero-point] TensorRT 10.3: node 'in_q'")
    assert "FAILED" in bad.stdout.splitlines()[-1]


def test_cli_json_on_a_clean_bundle(tmp_path) -> None:
    good = _kedge("check-trt", _bundle_with(tmp_path, qdq_graph()), "--json")
    assert good.returncode == 0, good.stdout + good.stderr
    data = json.loads(good.stdout)
    assert data["passed"] and data["errors"] == 0
    assert data["files"]["model.int8.qdq.onnx"] == "checked for TensorRT 10.3, 11"
    assert "onnx-tensorrt" in data["support_tables"]["10.3"]


SHIPPED = [(bundle.name, name) for bundle in sorted((ROOT / "runtime" / "models").iterdir()) if bundle.is_dir()
           for name in ("model.onnx", "model.fp16.onnx", "model.int8.qdq.onnx") if (bundle / name).is_file()]


@pytest.mark.skipif(not SHIPPED, reason="no shipped TensorRT-bound ONNX file")
@pytest.mark.parametrize(("bundle", "name"), SHIPPED)
def test_shipped_tensorrt_bound_files_pass(bundle, name) -> None:
    path = ROOT / "runtime" / "models" / bundle / name
    for trt in ("10.3", "11"):
        errors = [f.line() for f in check_model(path, trt) if f.severity == "error"]
        assert errors == [], "\n".join(errors)
