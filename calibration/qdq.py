"""INT8 with explicit Q/DQ, made by ONNX Runtime's quantizer from cached ranges.

Two files come from one calibration (SPEC section 2):

* `tensorrt`: symmetric int8 activations and per-channel symmetric int8 weights, float
  bias. This is the explicit-quantization form TensorRT 10 and 11 build INT8 from.
* `cpu`: asymmetric uint8 activations, per-channel int8 weights. On x86 CPUs with
  VNNI, ONNX Runtime's integer kernels want uint8 activations; with int8 ones the
  ResNet50-GRU ran no faster than FP32 (SPEC: 91 vs 95 ms) and with uint8 it did.

Both use 7-bit weights (ONNX Runtime's `reduce_range`). Why: x86 CPUs without VNNI
(AVX2 only, common in clinic workstations) multiply uint8 by int8 in pairs summed into
int16, which saturates with full 8-bit weights. Measured on an AVX2-only AMD EPYC: a
small knee-cnn's INT8 forms agreed with Keras on 53-74 % of images in ONNX Runtime
and OpenVINO with 8-bit weights, and on 98.7-99.7 % with 7-bit ones. TensorRT does
not saturate, and loses one bit of weight precision; its parity gate still decides.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from kedge.calibration.ranges import ort_method
from kedge.runtime.bundle.manifest import atomic_path
from kedge.runtime.errors import KedgeError

TARGETS = ("tensorrt", "cpu")


def quantize(
    onnx_path: str | os.PathLike[str],
    ranges_path: str | os.PathLike[str],
    method: str,
    target: str,
    out: str | os.PathLike[str],
    keep_float: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the Q/DQ model for `target` (tensorrt or cpu) from cached ranges, atomically.
    `keep_float`: more node names to leave unquantized (kedge export resolves --keep-float and
    --keep-float-cpu patterns with `expand_nodes` first). Returns a description for the manifest."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if target not in TARGETS:
        raise KedgeError(f"quantization target {target!r}: choose from {', '.join(TARGETS)}")
    tensorrt = target == "tensorrt"
    activations = QuantType.QInt8 if tensorrt else QuantType.QUInt8
    excluded = (first_convolution(onnx_path) if tensorrt else []) + output_nodes(onnx_path)
    excluded += [n for n in keep_float if n not in excluded]
    extra = {"ActivationSymmetric": tensorrt, "WeightSymmetric": True,
             # TensorRT takes float bias and folds it itself; the CPU kernels want int32 bias
             "QuantizeBias": not tensorrt}
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the "run pre-processing first" advice does not apply here
    try:
        with atomic_path(out) as tmp:
            quantize_static(os.fspath(onnx_path), tmp, calibration_data_reader=None,
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                            activation_type=activations, weight_type=QuantType.QInt8,
                            calibrate_method=ort_method(method), calibration_cache_path=ranges_path,
                            nodes_to_exclude=excluded, extra_options=extra)
    finally:
        logging.getLogger().setLevel(quiet)
    return {"target": target, "format": "QDQ", "method": method,
            "activations": "int8 symmetric" if tensorrt else "uint8 asymmetric",
            "weights": "int8 symmetric per-channel, 7-bit range", "bias": "float" if tensorrt else "int32",
            "kept_in_float": excluded}


def output_nodes(onnx_path: str | os.PathLike[str]) -> list[str]:
    """The nodes that write the graph's outputs (the final Softmax). Kept in float so the
    probabilities stay exact: quantized, each is rounded to a multiple of 1/255 and
    they no longer sum to 1."""
    import onnx

    graph = onnx.load(os.fspath(onnx_path), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if outputs.intersection(n.output)]


def first_convolution(onnx_path: str | os.PathLike[str]) -> list[str]:
    """The first Conv node's name. Its input is the image in [0, 1]: symmetric int8 would
    keep only 128 grey levels of the radiograph's 256, and bone texture is the signal.
    TensorRT 10 (FP16 flag on, as kedge sets it for INT8 builds) may run that layer in
    FP16; TensorRT 11 is strongly typed and runs it in FP32, its input's type."""
    import onnx

    model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type == "Conv"][:1]


def expand_nodes(onnx_path: str | os.PathLike[str], patterns: Sequence[str], option: str = "--keep-float") -> list[str]:
    """The nodes that --keep-float entries name, in graph order. An entry is a node's name or
    a shell-style pattern matched against each node's name and the names of its outputs:
    tf2onnx renames fused nodes (the ResNet50's first Conv+BatchNorm becomes `Conv__496`),
    but their outputs keep the Keras layer's name, so `*/conv1_*` stays valid across
    re-exports where a generated name would not. An entry that matches nothing is an error
    naming `option`."""
    import fnmatch

    if not patterns:
        return []
    import onnx

    graph = onnx.load(os.fspath(onnx_path), load_external_data=False).graph
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n.name for n in graph.node if n.name == pattern or any(
            fnmatch.fnmatchcase(name, pattern) for name in (n.name, *n.output))]
        if not hits:
            raise KedgeError(f"{option}: no node {pattern} in {os.fspath(onnx_path)} (node or output names "
                             "as `kedge export --sensitivity` prints them, or a pattern such as '*/conv1_*')")
        chosen += [h for h in hits if h not in chosen]
    return chosen
