"""The serve stage: bundles on a real NVIDIA Triton server (PyTriton)."""
from __future__ import annotations

from pathlib import Path

import click

from kedge.options import BUNDLE, backend_option, load_models, log, max_batch_option, precision_option


@click.command()
@click.argument("bundles", nargs=-1, type=BUNDLE)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address Triton's HTTP, gRPC and metrics endpoints listen on. 0.0.0.0 listens on every "
              "interface, unauthenticated and unencrypted: put a TLS proxy in front instead (docs/hardening.md).")
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(1, 65535))
@backend_option()
@precision_option()
@max_batch_option("Largest batch Triton's dynamic batcher forms.", default=16)
@click.option("--queue-delay-us", default=2000, show_default=True, type=click.IntRange(0, 10_000_000),
              help="How long the batcher waits to fill a batch, microseconds.")
def serve(bundles: tuple[Path, ...], host: str, http_port: int, grpc_port: int, metrics_port: int, backend: str,
          precision: str | None, max_batch: int, queue_delay_us: int) -> None:
    """Serve BUNDLES (default: the shipped models) on a real NVIDIA Triton server.

    Triton (started by PyTriton) provides HTTP and gRPC on the KServe v2 protocol,
    dynamic batching, and health (/v2/health/ready) and metrics (:8002/metrics)
    endpoints; each model, named after its bundle, runs on kedge's own backend
    (TensorRT on a GPU, ONNX Runtime on the CPU). Clients send preprocessed tensors:
    `kedge infer --triton http://HOST:8000 IMAGE...`.

    Listens on 127.0.0.1 unless --host says otherwise. Tensors that are not finite
    or not within [0, 1] are refused with an error reply.
    Run it from a virtual environment made with the system Python (Triton's stub
    must match the interpreter exactly): see docs/triton.md.

    \b
    Examples:
      kedge serve                                   # the shipped models, on 127.0.0.1:8000
      kedge serve runs/cnn --host 10.0.0.5 --http-port 9000
    """
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.serve import serve as run_server

    loaded = [load_bundle(b) for b in bundles] if bundles else load_models(None)
    run_server(loaded, http_port, grpc_port, metrics_port, backend, precision, max_batch, queue_delay_us, log=log,
               host=host)


COMMANDS = [serve]
