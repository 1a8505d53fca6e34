"""ONNX Runtime backend: the CPU default everywhere, CUDA where onnxruntime-gpu has it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kedge.runtime.backends.base import Backend
from kedge.runtime.errors import KedgeError


class OnnxRuntimeBackend(Backend):
    def __init__(self, path: str | os.PathLike[str], providers: list[str] | None = None,
                 threads: int | None = None, label: str | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise KedgeError("onnxruntime is not installed; install kedge[cpu]") from None
        path = Path(path)
        if not path.is_file():
            raise KedgeError(f"{path}: no such ONNX model")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as err:  # ORT raises its own exception types for corrupt or unsupported models
            raise KedgeError(f"{path}: ONNX Runtime could not load it ({str(err).splitlines()[0]})") from None
        self._input = self._session.get_inputs()[0].name
        self.providers = self._session.get_providers()
        device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.name = f"onnxruntime:{device} {label or path.name}"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input: np.ascontiguousarray(batch, np.float32)})[0])

    def close(self) -> None:
        self._session = None
