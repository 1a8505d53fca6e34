"""The Keras original as a backend: the parity reference wherever TensorFlow is installed."""
from __future__ import annotations

import os
from importlib.util import find_spec
from typing import Any

import numpy as np

from kedge.runtime.backends.base import Session
from kedge.runtime.errors import KedgeError


def keras_available() -> bool:
    """tf_keras importable (checked without importing TensorFlow)."""
    return find_spec("tf_keras") is not None


def open_keras(bundle: Any, what: str = "the Keras reference") -> KerasBackend:
    """A bundle's model.keras as a backend, or a one-line error naming what needed it."""
    if not keras_available():
        raise KedgeError(f"{what} needs TensorFlow (the [train] extra)")
    return KerasBackend(bundle.file("keras"))


class KerasBackend(Session):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        from kedge.train.models import load_keras_model

        self.model: Any = load_keras_model(path)
        self.name = "keras (tf_keras, CPU/GPU as TensorFlow chooses)"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(batch, training=False))

    def close(self) -> None:
        self.model = None
