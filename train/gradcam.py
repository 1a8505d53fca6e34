"""Grad-CAM on the Keras original (TensorFlow only): the gradient-weighted last
feature map, offered beside occlusion where TensorFlow is installed.

Both kedge models are a chain of layers, so the forward pass is replayed layer by
layer under one GradientTape and the last 4-D feature map (for the ResNet50-GRU, the
backbone's 7x7x2048 output) is taken on the way.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from kedge.runtime.errors import KedgeError


def grad_cam(model: Any, image: np.ndarray, class_index: int | None = None) -> tuple[np.ndarray, int, float]:
    """(heatmap in [0, 1] at the input's size, class index, its probability) for one image."""
    import tensorflow as tf

    layers = model.layers[1:] if type(model.layers[0]).__name__ == "InputLayer" else model.layers
    feature_at = max((i for i, layer in enumerate(layers) if len(_shape(layer)) == 4), default=None)
    if feature_at is None:
        raise KedgeError("grad-cam: the model has no 4-D feature map")
    x = tf.convert_to_tensor(image[None], tf.float32)
    with tf.GradientTape() as tape:
        features = None
        for i, layer in enumerate(layers):
            x = layer(x, training=False)
            if i == feature_at:
                features = x
                tape.watch(features)
        probabilities = x
        target = int(np.argmax(probabilities[0])) if class_index is None else class_index
        score = probabilities[:, target]
    gradients = tape.gradient(score, features)
    weights = tf.reduce_mean(gradients, axis=(1, 2))  # one weight per channel
    cam = tf.nn.relu(tf.reduce_sum(features * weights[:, None, None, :], axis=-1))[0].numpy()
    cam = cv2.resize(cam.astype(np.float32), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam), target, float(probabilities[0, target])


def _shape(layer: Any) -> tuple[Any, ...]:
    shape = layer.output_shape
    return tuple(shape[0] if isinstance(shape, list) else shape)
