"""`kedge serve`: bundles on a real NVIDIA Triton server, through PyTriton.

PyTriton starts Triton's own server binary (HTTP/gRPC on the KServe v2 protocol,
dynamic batching, health and metrics endpoints) and hands each batch to a Python
callable; here that callable is the bundle's kedge backend (TensorRT on a GPU, ONNX
Runtime on the CPU), so served answers are the same as `kedge infer`'s. Inputs are
preprocessed tensors: clients run kedge's one preprocessing function.

Triton's Python-backend stub must match the interpreter's patch version exactly: run
this from a virtual environment made with the system Python (docs/triton.md).

Triton listens on `host` only (127.0.0.1 by default, never every interface unless
told): put a TLS-terminating proxy in front to expose it (docs/hardening.md). A
batch holding a tensor that is not finite or not in [0, 1] (kedge's preprocessing
range) is refused with an error, never answered: an all-NaN tensor once got the
all-zero image's confident answer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.checks.choice import choose
from kedge.runtime.errors import KedgeError


def serve(bundles: Sequence[Bundle], http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
          backend: str = "auto", precision: str | None = None, max_batch: int = 16, queue_delay_us: int = 2000,
          log: Callable[[str], None] = print, host: str = "127.0.0.1") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    try:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError:
        raise KedgeError("kedge serve needs PyTriton: in a virtual environment made with the system Python, "
                         "pip install 'kedge[cpu,serve]' (see docs/triton.md)") from None
    opened = []
    _stop_on_signals(log)  # before Triton starts: a signal while models load must still stop it cleanly
    try:
        config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                              metrics_address=host, metrics_port=metrics_port, allow_sagemaker=False,
                              allow_vertex_ai=False)
        with Triton(config=config) as triton:
            for bundle in bundles:
                choice = choose(bundle, backend, precision)
                runner = choice.pair.open(bundle).activate()
                opened.append(runner)
                log(f"serving {bundle.name}: {choice.pair} ({choice.reason})")
                triton.bind(model_name=bundle.name, infer_func=batch(_infer_function(runner)),
                            inputs=[Tensor(name="image", dtype=np.float32, shape=(224, 224, 3))],
                            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(len(bundle.classes),))],
                            config=ModelConfig(max_batch_size=max_batch,
                                               batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us)),
                            strict=True)
            log(f"Triton on {host}: HTTP :{http_port}, gRPC :{grpc_port}, metrics :{metrics_port}; "
                "Ctrl-C or SIGTERM stops")
            triton.serve()
    finally:
        for runner in opened:
            runner.close()


def _stop_on_signals(log: Callable[[str], None]) -> None:
    """SIGINT and SIGTERM both end serve() through PyTriton's clean shutdown (it stops on
    KeyboardInterrupt). Set explicitly: a server started in the background by a script
    inherits SIGINT ignored, and Kubernetes or systemd stop with SIGTERM."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        log(f"{signal.Signals(signum).name} received: stopping Triton")
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _infer_function(runner: Any) -> Callable[..., dict[str, np.ndarray]]:
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        # the range check is False for NaN too; PyTriton turns the error into an error reply
        if not (np.isfinite(image).all() and image.min(initial=0.0) >= 0.0 and image.max(initial=0.0) <= 1.0):
            raise KedgeError("refused: the image tensor must be finite and within [0, 1] (kedge's preprocessing)")
        return {"probabilities": runner.infer(image).astype(np.float32)}

    return infer
