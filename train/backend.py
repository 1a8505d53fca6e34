"""The Keras original as a backend: the parity reference wherever TensorFlow is installed."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from kedge.runtime.backends.base import Backend


class KerasBackend(Backend):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        from kedge.train.models import load_keras_model

        self.model: Any = load_keras_model(path)
        self.name = "keras (tf_keras, CPU/GPU as TensorFlow chooses)"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(batch, training=False))

    def close(self) -> None:
        self.model = None
