"""Keras to ONNX with tf2onnx, checked, named, and gated on parity with Keras.

The models are built in tf_keras (see kedge.train.tfkeras), so tf2onnx turns the
ResNet50-GRU's GRU into one native ONNX GRU op rather than a Loop (SPEC section 2).
The graph keeps the runtime's layout: input `image` (batch, 224, 224, 3) float32 in
[0, 1], output `probabilities` (batch, classes); the batch axis is dynamic and named
`batch`. tf2onnx adds the NHWC->NCHW Transpose itself, so no caller ever transposes.
Converting the full ResNet50-GRU peaks near 10 GB of RAM: convert one model at a time.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from kedge.runtime.bundle.manifest import atomic_path
from kedge.runtime.errors import KedgeError, first_line
from kedge.runtime.inputs.preprocess import INPUT_SHAPE, PREPROCESS_VERSION

DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
KERAS_PARITY_TOLERANCE = 1e-4  # max |dp| between Keras and ONNX Runtime on the gate images


def keras_to_onnx(
    model: Any,
    path: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
) -> Any:
    """Convert a Keras model to a checked onnx.ModelProto with the runtime's names;
    write it atomically to `path` when given."""
    import onnx
    import tf2onnx

    from kedge.train.tfkeras import tensorflow

    tf = tensorflow()
    signature = (tf.TensorSpec((None, *INPUT_SHAPE), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    _name_io(proto)
    props = {"kedge_preprocessing": PREPROCESS_VERSION, **(metadata or {})}
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = f"kedge (via {proto.producer_name})"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:  # a converter bug, not a user error, but say it in one line
        raise KedgeError(f"the ONNX model failed the ONNX checker: {first_line(err)}") from None
    if path is not None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(proto.SerializeToString())
    return proto


def _name_io(proto: Any) -> None:
    """One input `image`, one output `probabilities`, batch axis named `batch`."""
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise KedgeError(f"expected a model with one input and one output, got {len(graph.input)} and "
                         f"{len(graph.output)}")
    old = graph.output[0].name
    if old != OUTPUT_NAME:
        for node in graph.node:
            node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
            node.input[:] = [OUTPUT_NAME if name == old else name for name in node.input]
        graph.output[0].name = OUTPUT_NAME
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM


def check_parity(
    reference: Any,
    candidate: Any,
    images: np.ndarray,
    tolerance: float,
    what: str,
    batch_size: int = 8,
) -> float:
    """Run both predictors on `images`; raise a KedgeError if max |dp| exceeds `tolerance`.

    Used as a gate at export time: a form that drifts is never written under its
    final name. Returns the max |dp| seen.
    """
    worst = 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        diff = np.abs(np.asarray(reference(batch), np.float64) - np.asarray(candidate(batch), np.float64))
        worst = max(worst, float(diff.max()))
    if not np.isfinite(worst) or worst > tolerance:
        raise KedgeError(f"{what}: max |dp| {worst:.3g} on {len(images)} gate images exceeds {tolerance:g}; "
                         "the export was not written")
    return worst


def gate_images(paths: Sequence[str | os.PathLike[str]], count: int = 8, seed: int = 0) -> np.ndarray:
    """A handful of model inputs for the export gates: real images when given, else
    synthetic knees (deterministic), always through the runtime's preprocessing."""
    from kedge.runtime.inputs.preprocess import preprocess

    if paths:
        chosen = list(paths)[:count]
        return np.stack([preprocess(p) for p in chosen])
    from kedge.runtime.checks.synthetic import knee_radiograph
    from kedge.runtime.inputs.preprocess import to_model_input

    rng = np.random.default_rng(seed)
    densities = np.linspace(0.2, 0.8, count)
    return np.stack([to_model_input(knee_radiograph(float(d), rng), 255) for d in densities])
