"""`kedge check-trt`: a static check of every ONNX file a TensorRT engine is built from.

No GPU and no TensorRT needed: each finding is something TensorRT's ONNX parser or
builder would reject, or would accept and run worse than intended, and it names the
file, the node and the rule. The rules:

* operators and their attributes against TensorRT 10.3's and 11's parser support,
  kept as data in trt_operators.json (the published onnx-tensorrt table it came from
  is named there), including the GRU's attributes;
* explicit quantization (files with Q/DQ): zero-points 0, int8 types, scales constant
  and positive, weights per channel on the output axis, both inputs of Conv / MatMul /
  Gemm quantized (else a warning: TensorRT runs the node in float), residual Adds
  quantized on both inputs or neither, and no Q/DQ feeding an op TensorRT runs only in
  float (warnings: they build, but cost accuracy or speed);
* TensorRT 11's strong typing: FP16 files keep FP32 inputs and outputs, and no op
  mixes float types in its inputs;
* the batch axis: dynamic, so the engine profile (1..max batch) fits, and not baked
  into a Reshape.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from kedge.runtime.bundle.forms import onnx_forms, tensorrt_bound
from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.errors import KedgeError, first_line

TRT_VERSIONS = ("10.3", "11")
DEFAULT_MAX_BATCH = 16  # `kedge export --engine`'s default profile is batch 1..16
FLOAT_TYPES = {1: "float32", 10: "float16", 16: "bfloat16"}
TYPE_NAMES = {**FLOAT_TYPES, 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool"}
NO_TYPE_RULE = {"Cast", "CastLike", "QuantizeLinear", "DequantizeLinear", "Shape", "Size", "Reshape", "Expand",
                "Slice", "Squeeze", "Unsqueeze", "Tile", "Gather", "Pad", "Resize", "ConstantOfShape", "Range"}


@dataclass(frozen=True)
class Finding:
    file: str
    trt: str
    severity: str  # error | warning
    rule: str
    node: str
    message: str

    def line(self) -> str:
        return f"{self.file}: {self.severity} [{self.rule}] TensorRT {self.trt}: node {self.node!r}: {self.message}"


@cache
def support_table() -> dict[str, Any]:
    return dict(json.loads((Path(__file__).parent / "trt_operators.json").read_text(encoding="utf-8")))


def operators_for(trt: str) -> tuple[dict[str, Any], int, str]:
    """(operator table, max opset, source) for a TensorRT version key."""
    entry = support_table()["tensorrt"][trt]
    table = entry if "operators" in entry else support_table()["tensorrt"][entry["operators_from"]]
    return table["operators"], int(entry["max_opset"]), str(table["source"])


class _Graph:
    """The model with the lookups every rule needs: producers, consumers, constants, types."""

    def __init__(self, model: Any) -> None:
        import onnx

        self.model = model
        self.graph = model.graph
        self.init = {t.name: t for t in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
        except Exception:  # noqa: BLE001 (types are a bonus; the other rules still run)
            inferred = self.graph
        values = [*inferred.value_info, *inferred.input, *inferred.output]
        self.types = {v.name: v.type.tensor_type.elem_type for v in values}
        self.leading = {v.name: v.type.tensor_type.shape.dim[0] for v in values if v.type.tensor_type.shape.dim}
        self.types.update({name: t.data_type for name, t in self.init.items()})
        for node in self.graph.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.types[node.output[0]] = attribute.t.data_type

    def array(self, name: str) -> Any:
        """The value of an initializer or Constant output, else None."""
        from onnx import numpy_helper

        if name in self.init:
            return numpy_helper.to_array(self.init[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
        return None

    def is_constant(self, name: str) -> bool:
        """An initializer, a Constant, or a DequantizeLinear of one (a quantized weight)."""
        if name in self.init or (name in self.producer and self.producer[name].op_type == "Constant"):
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear" and self.is_constant(node.input[0])

    def from_dq(self, name: str) -> Any:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            if isinstance(value, bytes):
                return value.decode()
            if isinstance(value, list):
                return [v.decode() if isinstance(v, bytes) else v for v in value]
            return value
    return default


def _name(node: Any) -> str:
    return node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"


def check_model(path: str | os.PathLike[str], trt: str, max_batch: int = 16, label: str | None = None,
                strongly_typed: bool | None = None) -> list[Finding]:
    """Every finding for one ONNX file and one TensorRT version."""
    import onnx

    if trt not in TRT_VERSIONS:
        raise KedgeError(f"--trt {trt}: choose from {', '.join(TRT_VERSIONS)}")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 (any parse failure is one line)
        first = first_line(err)
        raise KedgeError(f"{path}: not a readable ONNX model ({first})") from None
    g = _Graph(model)
    file = label or Path(path).name
    found: list[Finding] = []

    def add(severity: str, rule: str, node: str, message: str) -> None:
        found.append(Finding(file, trt, severity, rule, node, message))

    _check_operators(g, trt, add)
    _check_attributes(g, add)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.graph.node):
        _check_qdq(g, add)
    typed = trt == "11" if strongly_typed is None else strongly_typed
    if typed:
        _check_strong_typing(g, add)
    _check_batch(g, max_batch, add)
    return found


Add = Any  # the `add(severity, rule, node, message)` callback


def _check_operators(g: _Graph, trt: str, add: Add) -> None:
    table, max_opset, source = operators_for(trt)
    for opset in g.model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > max_opset:
            add("error", "opset", "(model)", f"opset {opset.version} > {max_opset}, the newest this parser reads")
    for node in g.graph.node:
        if node.domain not in ("", "ai.onnx"):
            add("error", "op-unsupported", _name(node), f"{node.domain}.{node.op_type} is not an ONNX operator "
                "TensorRT's parser knows (a plugin would be needed)")
            continue
        entry = table.get(node.op_type)
        if entry is None or not entry.get("supported"):
            why = "not in" if entry is None else "marked unsupported in"
            add("error", "op-unsupported", _name(node), f"{node.op_type} is {why} the support table ({source})")


def _check_attributes(g: _Graph, add: Add) -> None:
    data = support_table()
    rules: dict[str, list[dict[str, Any]]] = {}
    for rule in data["attribute_rules"]:
        rules.setdefault(rule["op"], []).append(rule)
    for node in g.graph.node:
        for rule in rules.get(node.op_type, []):
            problem = _rule_problem(g, node, rule, data)
            if problem:
                add("error", "op-attribute", _name(node), f"{problem} ({rule['why']})")


def _rule_problem(g: _Graph, node: Any, rule: dict[str, Any], data: dict[str, Any]) -> str | None:
    if "attribute" in rule:
        value = _attr(node, rule["attribute"], rule.get("default"))
        if value is None:
            return f"{node.op_type} needs the {rule['attribute']} attribute" if rule.get("required") else None
        if "in" in rule and value not in rule["in"]:
            return f"{rule['attribute']}={value!r}, allowed {rule['in']}"
        if "each_in" in rule:
            bad = [v for v in value if v not in data[rule["each_in"]]]
            if bad:
                return f"{rule['attribute']} {bad} not among {data[rule['each_in']]}"
        if "all_equal" in rule and any(v != rule["all_equal"] for v in value):
            return f"{rule['attribute']}={value}, must all be {rule['all_equal']}"
    if rule.get("bidirectional_same_activations") and _attr(node, "direction") == "bidirectional":
        acts = _attr(node, "activations")
        if acts and acts[: len(acts) // 2] != acts[len(acts) // 2 :]:
            return f"bidirectional with different activations per direction {acts}"
    for index in rule.get("constant_inputs", []):
        if index < len(node.input) and node.input[index] and not g.is_constant(node.input[index]):
            return f"input {index} ({node.input[index]!r}) is computed at run time, must be an initializer"
    if "weight_rank_in" in rule and len(node.input) > 1:
        weight = g.array(node.input[1])
        dq = g.from_dq(node.input[1])
        if weight is None and dq is not None:
            weight = g.array(dq.input[0])
        if weight is not None and weight.ndim not in rule["weight_rank_in"]:
            return f"weight rank {weight.ndim}, supported {rule['weight_rank_in']}"
    if "max_outputs" in rule and len([o for o in node.output if o]) > rule["max_outputs"]:
        return f"{len(node.output)} outputs used, at most {rule['max_outputs']}"
    return None


def _check_qdq(g: _Graph, add: Add) -> None:
    qdq = support_table()["qdq"]
    for node in g.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_qdq_node(g, node, add)
        elif node.op_type in qdq["quantizable"]:
            _check_quantized_input_pair(g, node, add)
        elif node.op_type == "Add":
            _check_residual_add(g, node, add)
    for node, dq, _tensor in _float_consumers(g):
        add("warning", "qdq-float-consumer", _name(node),
            f"{node.op_type} reads DequantizeLinear {_name(dq)!r}: TensorRT runs {node.op_type} in "
            "float, so the Q/DQ pair only adds quantization noise; keep it out of quantization")


def _float_consumers(g: _Graph) -> list[tuple[Any, Any, str]]:
    """(node, its DequantizeLinear input, the tensor quantized there) for every activation Q/DQ pair
    read by an op TensorRT runs only in float."""
    qdq = support_table()["qdq"]
    skip = {"QuantizeLinear", "DequantizeLinear", *qdq["quantizable"], *qdq["int8_through"]}
    out = []
    for node in g.graph.node:
        if node.op_type in skip:
            continue
        for name in node.input:
            dq = g.from_dq(name)
            if dq is not None and not g.is_constant(dq.input[0]):
                q = g.producer.get(dq.input[0])
                out.append((node, dq, q.input[0] if q is not None and q.op_type == "QuantizeLinear" else name))
    return out


def float_consumer_nodes(qdq_path: str | os.PathLike[str]) -> list[str]:
    """Nodes to keep in float so no Q/DQ pair feeds an op TensorRT runs in float: each such
    reader and the writer of the tensor quantized there (names shared with the FP32 model)."""
    import onnx

    g = _Graph(onnx.load(os.fspath(qdq_path), load_external_data=False))
    nodes: list[str] = []
    for node, _dq, tensor in _float_consumers(g):
        writer = g.producer.get(tensor)
        for name in (writer.name if writer is not None else "", node.name):
            if name and name not in nodes:
                nodes.append(name)
    return nodes


def _check_qdq_node(g: _Graph, node: Any, add: Add) -> None:
    name = _name(node)
    scale = g.array(node.input[1]) if len(node.input) > 1 else None
    if scale is not None and (scale <= 0).any():
        add("error", "qdq-scale", name, "scale not positive everywhere")
    if len(node.input) < 3 or not node.input[2]:
        output_dtype = _attr(node, "output_dtype", 0)
        if node.op_type == "QuantizeLinear" and output_dtype != 3:
            add("error", "qdq-type", name, "no zero-point: ONNX then means uint8, TensorRT needs int8 "
                "(a zero-point of type int8, value 0)")
        return
    zero = g.array(node.input[2])
    zero_type = g.types.get(node.input[2])
    if zero_type == 6:
        add("error", "qdq-type", name, "int32 zero-point: a quantized bias; TensorRT takes float bias and folds it "
            "itself (quantize activations and weights only)")
    elif zero_type is not None and zero_type != 3:
        add("error", "qdq-type", name, f"zero-point type {TYPE_NAMES.get(zero_type, zero_type)}, TensorRT's INT8 "
            "needs int8 (uint8 Q/DQ is read as int8 and shifts every value)")
    if zero is not None and (zero != 0).any():
        add("error", "qdq-zero-point", name, f"zero-point {int(zero.flat[(zero != 0).argmax()])} "
            "(TensorRT needs every zero-point 0: symmetric quantization)")


def _weight_axis(g: _Graph, consumer: Any, index: int, rank: int) -> int:
    """The output-channel axis of a weight input: Conv 0, ConvTranspose 1, MatMul last, Gemm by transB."""
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        trans = _attr(consumer, "transB" if index == 1 else "transA", 0)
        return 0 if trans else 1
    return rank - 1


def _check_quantized_input_pair(g: _Graph, node: Any, add: Add) -> None:
    data_dq, weight_dq = g.from_dq(node.input[0]), g.from_dq(node.input[1]) if len(node.input) > 1 else None
    if data_dq is None and weight_dq is None:
        return  # kept in float on purpose
    name = _name(node)
    if data_dq is None or weight_dq is None:
        missing = "data input" if data_dq is None else "weight"
        add("warning", "qdq-placement", name, f"{node.op_type} has a quantized "
            f"{'weight' if data_dq is None else 'data input'} but a float {missing}: TensorRT runs it in float "
            "(fine for a node kept in float on purpose, else quantize both inputs for INT8)")
        return
    weight = g.array(weight_dq.input[0])
    if weight is None:
        return
    scale = g.array(weight_dq.input[1])
    if scale is None or scale.size == 1:
        if weight.ndim > 1 and weight.shape[_weight_axis(g, node, 1, weight.ndim)] > 1:
            add("warning", "qdq-weight-axis", name, "weight quantized per tensor; TensorRT expects per-channel "
                "scales on the output-channel axis (better accuracy at the same speed)")
        return
    axis = _attr(weight_dq, "axis", 1) % weight.ndim
    want = _weight_axis(g, node, 1, weight.ndim)
    if axis != want:
        add("error", "qdq-weight-axis", _name(weight_dq), f"{node.op_type} weight quantized per channel on axis "
            f"{axis}; the output-channel axis is {want}")


def _check_residual_add(g: _Graph, node: Any, add: Add) -> None:
    activations = [name for name in node.input if not g.is_constant(name)]
    if len(activations) != 2:
        return
    quantized = [g.from_dq(name) is not None for name in activations]
    if any(quantized) and not all(quantized):
        add("warning", "qdq-residual-add", _name(node), "residual Add with one quantized input: TensorRT fuses "
            "the Add into the Conv's INT8 output only when both inputs carry Q/DQ (or neither does)")


def _check_strong_typing(g: _Graph, add: Add) -> None:
    for value in [*g.graph.input, *g.graph.output]:
        elem = value.type.tensor_type.elem_type
        if elem in FLOAT_TYPES and elem != 1:
            add("error", "strong-typing-io", value.name, f"graph {'input' if value in g.graph.input else 'output'} "
                f"is {FLOAT_TYPES[elem]}; kedge's engines take and give float32 (strongly typed, TensorRT keeps "
                "the file's types)")
    for node in g.graph.node:
        if node.op_type in NO_TYPE_RULE:
            continue
        kinds = {FLOAT_TYPES[t] for t in (g.types.get(name) for name in node.input if name) if t in FLOAT_TYPES}
        if len(kinds) > 1:
            add("error", "strong-typing-mixed", _name(node), f"{node.op_type} mixes {' and '.join(sorted(kinds))} "
                "inputs; a strongly typed network needs a Cast, TensorRT 11 will not insert one")


def _check_batch(g: _Graph, max_batch: int, add: Add) -> None:
    inputs = [i for i in g.graph.input if i.name not in g.init]
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        if not dims:
            continue
        first = dims[0]
        if first.HasField("dim_value") and not first.dim_value == max_batch == 1:
            add("error", "batch-axis", value.name, f"batch axis fixed at {first.dim_value}; the engine profile "
                f"is batch 1..{max_batch}: export with a dynamic batch axis")
        if any(d.HasField("dim_param") or not d.HasField("dim_value") for d in dims[1:]):
            add("error", "batch-axis", value.name, "only the batch axis may be dynamic (the profile fixes the rest)")
    for node in g.graph.node:
        leading = g.leading.get(node.input[0]) if node.op_type == "Reshape" else None
        if leading is not None and leading.HasField("dim_param") and len(node.input) > 1:  # reshapes a batch
            shape = g.array(node.input[1])
            if shape is not None and shape.size > 1 and int(shape[0]) > 1:
                add("error", "batch-axis", _name(node), f"Reshape to a fixed leading size {int(shape[0])}: "
                    "batch sizes other than that fail in the engine")


@dataclass
class BundleCheck:
    """check-trt over a bundle: the files checked (or why not) and every finding."""

    bundle: str
    trt: list[str]
    files: dict[str, str]  # file -> "checked for 10.3, 11" or why it was not
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "tensorrt": self.trt, "files": self.files, "passed": self.passed,
                "errors": len(self.errors), "warnings": len(self.findings) - len(self.errors),
                "findings": [asdict(f) for f in self.findings],
                "support_tables": {v: operators_for(v)[2] for v in self.trt}}

    def lines(self) -> list[str]:
        out = [f.line() for f in self.findings]
        out += [f"{file}: {status}" for file, status in self.files.items()]
        verdict = "passed" if self.passed else f"FAILED ({len(self.errors)} errors)"
        warnings = len(self.findings) - len(self.errors)
        out.append(f"check-trt {self.bundle}: {verdict}, {warnings} warnings, TensorRT {' and '.join(self.trt)}")
        return out


def bound_files(bundle: Bundle, trt: str) -> list[tuple[str, Path]]:
    """The TensorRT-bound ONNX files a bundle lists, for one TensorRT version (sha256-checked):
    those whose row of the table of forms names this TensorRT (10.x takes the FP32 file with
    the FP16 flag; 11 is strongly typed and takes the FP16 file)."""
    keys = [str(f.artifact) for f in tensorrt_bound(trt)]
    return [(key, bundle.file(key)) for key in keys if bundle.has(key)]


def check_bundle(bundle: Bundle, versions: Sequence[str] = TRT_VERSIONS,
                 max_batch: int | None = None) -> BundleCheck:
    """check-trt on every TensorRT-bound file of a bundle, for each TensorRT version."""
    batch = max_batch or DEFAULT_MAX_BATCH
    files: dict[str, list[str]] = {}
    findings: list[Finding] = []
    for trt in versions:
        for _key, path in bound_files(bundle, trt):
            findings += check_model(path, trt, batch)
            files.setdefault(path.name, []).append(trt)
    status = {name: f"checked for TensorRT {', '.join(v)}" for name, v in files.items()}
    bound = [f for f in onnx_forms() if f.tensorrt]
    for spec in bound:
        if not bundle.has(str(spec.artifact)):
            status[spec.file] = "not in this bundle"
    if not files:
        names = [f.file for f in bound]
        raise KedgeError(f"{bundle.path}: no TensorRT-bound ONNX file ({', '.join(names[:-1])} or {names[-1]}); "
                         "run `kedge export` first")
    return BundleCheck(str(bundle.path), list(versions), status, _dedupe(findings))


def _dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """One line per finding: a rule that holds for both TensorRT versions is reported once, as '10.3+11'."""
    merged: dict[tuple[str, str, str, str, str], list[str]] = {}
    for f in findings:
        merged.setdefault((f.file, f.severity, f.rule, f.node, f.message), []).append(f.trt)
    return [Finding(file, "+".join(trts), severity, rule, node, message)
            for (file, severity, rule, node, message), trts in merged.items()]
