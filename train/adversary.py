"""Domain-adversarial training (Ganin and Lempitsky, 2015): a source classifier reads the
class model's penultimate features through a gradient-reversal layer, so the shared
layers are pushed towards features that do not tell the sources apart.

Why: per-(source, class) weights take away the reward for answering from the source,
but not the features that carry it; a collection's look can still steer the answer on
images unlike the training mix. The head lives only in the training graph: the bundle
holds the class model alone, so export, parity and the runtime are unchanged.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from kedge.train.tfkeras import keras, tensorflow

SOURCE_HIDDEN = 256  # the source head's hidden width: small, a probe rather than a second model


def ramp(epoch: int, epochs: int) -> float:
    """Ganin's schedule 2 / (1 + exp(-10 p)) - 1 over training progress p in [0, 1]: the
    reversal starts at 0, while the class features are still noise, and nears 1 by a
    third of the way."""
    progress = epoch / max(1, epochs - 1)
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def gradient_reversal_layer() -> Any:
    """A Keras layer that is the identity forwards and multiplies the gradient by
    -strength backwards; `strength` is a non-trainable variable set between epochs."""
    k, tf = keras(), tensorflow()

    class GradientReversal(k.layers.Layer):  # type: ignore[name-defined]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.strength = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="strength")

        def call(self, inputs: Any) -> Any:
            @tf.custom_gradient
            def reverse(x: Any) -> Any:
                def grad(upstream: Any) -> Any:
                    return -self.strength * upstream
                return tf.identity(x), grad
            return reverse(inputs)

    return GradientReversal


class Adversary:
    """The two-headed training model around a compiled class model, and one train step."""

    def __init__(self, model: Any, n_sources: int, weight: float, optimizer: Any, class_loss: Any) -> None:
        k = keras()
        self.weight = weight
        self.reversal = gradient_reversal_layer()(name="gradient_reversal")
        features = model.get_layer("probabilities").input
        hidden = k.layers.Dense(SOURCE_HIDDEN, activation="relu", name="source_dense")(self.reversal(features))
        source = k.layers.Dense(n_sources, activation="softmax", dtype="float32", name="source")(hidden)
        self.trainer = k.Model(model.input, [model.output, source], name=f"{model.name}_adversarial")
        self.trainer.compile(optimizer=optimizer, loss={"probabilities": class_loss,
                                                        "source": "sparse_categorical_crossentropy"},
                             metrics={"probabilities": "accuracy", "source": "accuracy"})

    def begin_epoch(self, epoch: int, epochs: int) -> float:
        strength = self.weight * ramp(epoch, epochs)
        self.reversal.strength.assign(strength)
        return strength

    def step(self, x: np.ndarray, y: np.ndarray, source: np.ndarray, weights: np.ndarray) -> tuple[float, float, float]:
        """One batch; returns (class loss, class accuracy, source-head accuracy)."""
        out = self.trainer.train_on_batch(x, {"probabilities": y, "source": source},
                                          sample_weight={"probabilities": weights, "source": weights},
                                          return_dict=True)
        return float(out["probabilities_loss"]), float(out["probabilities_accuracy"]), float(out["source_accuracy"])
