"""A Triton Inference Server as a backend: kedge preprocesses on the client (its one
preprocessing function) and sends the tensors over HTTP (KServe v2 protocol)."""
from __future__ import annotations

from typing import Any

import numpy as np

from kedge.runtime.backends.base import Session
from kedge.runtime.errors import KedgeError


class TritonBackend(Session):
    def __init__(self, url: str, model: str, timeout_s: float = 60.0) -> None:
        try:
            import tritonclient.http as http
        except ImportError:
            raise KedgeError("--triton needs tritonclient: pip install 'kedge[serve]' (see README, Triton)") from None
        self._http = http
        address = url.split("://", 1)[-1].rstrip("/")
        try:
            self._client: Any = http.InferenceServerClient(address, connection_timeout=timeout_s,
                                                           network_timeout=timeout_s)
            ready = self._client.is_model_ready(model)
        except Exception as err:  # connection refused, DNS, timeouts: tritonclient raises several types
            raise KedgeError(f"{url}: Triton server not reachable ({str(err).splitlines()[0]})") from None
        if not ready:
            raise KedgeError(f"{url}: Triton serves no ready model named {model!r}")
        self._model = model
        self.form = "triton"
        self.name = f"triton {url} {model}"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        tensor = self._http.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, np.float32))
        try:
            result = self._client.infer(self._model, [tensor])
        except Exception as err:
            raise KedgeError(f"{self.name}: inference failed ({str(err).splitlines()[0]})") from None
        return np.asarray(result.as_numpy("probabilities"), np.float32)

    def close(self) -> None:
        if getattr(self, "_client", None) is not None:
            self._client.close()
            self._client = None
