"""The interface every backend shares: load at construction, infer a batch, close.

A backend takes preprocessed images (N, 224, 224, 3) float32 and returns class
probabilities (N, classes) float32; it is a context manager, so its memory (a CUDA
context, an ONNX Runtime session) is released at a known point. Parity, evaluation
and benchmarks only ever see this interface.
"""
from __future__ import annotations

import abc
from types import TracebackType

import numpy as np


class Backend(abc.ABC):
    """A loaded model form. `name` says what it is, e.g. 'onnxruntime:cpu int8'."""

    name: str = "backend"

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of model inputs."""

    def close(self) -> None:  # noqa: B027 (most backends have something to release, not all)
        """Release what load took; safe to call twice."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.infer(batch)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
