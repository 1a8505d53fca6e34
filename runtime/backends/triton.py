"""A Triton Inference Server as a backend: kedge preprocesses on the client (its one
preprocessing function) and sends the tensors over HTTP (KServe v2 protocol).

A batch larger than the server model's max_batch_size is sent in pieces (Triton
refuses the whole request otherwise, and every answer of the run was lost), and an
answer whose shape does not fit the batch is an error, not a traceback further on."""
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
        try:
            config = self._client.get_model_config(model)
            self.max_batch = max(1, int(config.get("max_batch_size", 1)))
        except Exception as err:
            raise KedgeError(f"{url}: cannot read model {model!r}'s config ({str(err).splitlines()[0]})") from None
        self._model = model
        self.form = "triton"
        self.name = f"triton {url} {model}"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        pieces = [self._infer_piece(batch[start:start + self.max_batch])
                  for start in range(0, len(batch), self.max_batch)]
        return np.concatenate(pieces) if pieces else np.zeros((0, 0), np.float32)

    def _infer_piece(self, batch: np.ndarray) -> np.ndarray:
        tensor = self._http.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, np.float32))
        try:
            result = self._client.infer(self._model, [tensor])
        except Exception as err:
            raise KedgeError(f"{self.name}: inference failed ({str(err).splitlines()[0]})") from None
        answer = np.asarray(result.as_numpy("probabilities"), np.float32)
        if answer.ndim != 2 or len(answer) != len(batch):
            raise KedgeError(f"{self.name}: the server answered shape {answer.shape} for {len(batch)} images")
        return answer

    def close(self) -> None:
        if getattr(self, "_client", None) is not None:
            self._client.close()
            self._client = None
