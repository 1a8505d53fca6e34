"""Keras to ONNX with tf2onnx.

The models are built in tf_keras (see kedge.train.tfkeras), so tf2onnx turns the
ResNet50-GRU's GRU into one native ONNX GRU op rather than a Loop. The batch axis is
left dynamic. The export issue adds the checker, the parity gate and FP16/INT8 forms.
"""
from __future__ import annotations

import os
from typing import Any

from kedge.runtime.bundle import atomic_path
from kedge.runtime.preprocess import INPUT_SHAPE

DEFAULT_OPSET = 17
INPUT_NAME = "image"


def keras_to_onnx(model: Any, path: str | os.PathLike[str] | None = None, opset: int = DEFAULT_OPSET) -> Any:
    """Convert a Keras model to an onnx.ModelProto (input 'image', NHWC, batch dynamic);
    write it atomically to `path` when given."""
    import tf2onnx

    from kedge.train.tfkeras import tensorflow

    tf = tensorflow()
    signature = (tf.TensorSpec((None, *INPUT_SHAPE), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    if path is not None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(proto.SerializeToString())
    return proto
