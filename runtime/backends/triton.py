"""A Triton Inference Server as a backend: kedge preprocesses on the client (its one
preprocessing function) and sends the tensors over HTTP (KServe v2 protocol). The
server's URL is the backend's `url` option (`kedge infer --triton URL`).

A batch larger than the server model's max_batch_size is sent in pieces (Triton
refuses the whole request otherwise, and every answer of the run was lost), and an
answer whose shape does not fit the batch is an error, not a traceback further on.

The server runs whatever form it was given (`kedge export --triton`, `kedge serve`), so
this backend's one form is "served", outside the table of forms, and no parity or golden
check covers it here (`checked` False): it runs only when named, never by `auto`."""
from __future__ import annotations

from typing import Any

import numpy as np

from kedge.runtime.backends.base import Backend, Session
from kedge.runtime.bundle.forms import Form
from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.errors import KedgeError, first_line

SERVED = Form("triton", "served", "", None, "whatever form the Triton server runs", format="served")


def _tritonclient_http() -> Any:
    try:
        import tritonclient.http as http
    except ImportError:
        raise KedgeError("tritonclient is not installed; install kedge[serve] (see docs/triton.md)") from None
    return http


class TritonSession(Session):
    def __init__(self, url: str, model: str, timeout_s: float = 60.0) -> None:
        http = _tritonclient_http()
        self._http = http
        address = url.split("://", 1)[-1].rstrip("/")
        try:
            self._client: Any = http.InferenceServerClient(address, connection_timeout=timeout_s,
                                                           network_timeout=timeout_s)
            ready = self._client.is_model_ready(model)
        except Exception as err:  # connection refused, DNS, timeouts: tritonclient raises several types
            raise KedgeError(f"{url}: Triton server not reachable ({first_line(err)})") from None
        if not ready:
            raise KedgeError(f"{url}: Triton serves no ready model named {model!r}")
        try:
            config = self._client.get_model_config(model)
            self.max_batch = max(1, int(config.get("max_batch_size", 1)))
        except Exception as err:
            raise KedgeError(f"{url}: cannot read model {model!r}'s config ({first_line(err)})") from None
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
            raise KedgeError(f"{self.name}: inference failed ({first_line(err)})") from None
        answer = np.asarray(result.as_numpy("probabilities"), np.float32)
        if answer.ndim != 2 or len(answer) != len(batch):
            raise KedgeError(f"{self.name}: the server answered shape {answer.shape} for {len(batch)} images")
        return answer

    def close(self) -> None:
        if getattr(self, "_client", None) is not None:
            self._client.close()
            self._client = None


class Triton(Backend):
    """The plug-in: the bundle's model (by its name) on the Triton server at option `url`."""

    name, device, own_forms = "triton", "a Triton server", (SERVED,)
    title = "Triton client"
    checked = False
    runtime = staticmethod(_tritonclient_http)

    @classmethod
    def forms_in(cls, bundle: Bundle) -> list[Form]:
        return [SERVED]  # whatever the server runs for the bundle's name; known only once connected

    @classmethod
    def precisions(cls, form: Form) -> tuple[str, ...]:
        return (SERVED.precision,)

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"tritonclient {version('tritonclient')}"
        except PackageNotFoundError:
            return "tritonclient (version unknown)"

    @classmethod
    def info(cls) -> dict[str, Any] | None:
        return None if cls.problem() else {"version": cls.version()}

    @classmethod
    def describe(cls, info: dict[str, Any] | None) -> str:
        return f"{info['version']} (kedge infer --triton URL)" if info else \
            "not installed (pip install 'kedge[serve]'; see docs/triton.md)"

    @property
    def url(self) -> str:
        url = self.options.get("url")
        if not url:
            raise KedgeError("the triton backend needs the server's URL (kedge infer --triton URL)")
        return str(url)

    @property
    def label(self) -> str:
        return f"triton {self.url} {self.bundle.name}"

    def standing(self) -> str:
        return f"Triton server at {self.url}, model {self.bundle.name}"

    def file_sha256(self) -> str | None:
        return None  # the server's file; see its model repository

    def runtime_version(self) -> str:
        return f"Triton server {self.url}"

    def open(self) -> Session:
        return TritonSession(self.url, self.bundle.name)
