"""The backend registry: registry name -> the `Backend` plug-in class that runs forms.

Entries are "module:Class" strings so that importing the registry loads no runtime
(TensorRT, OpenVINO and ONNX Runtime are each imported only when used). To add a
backend, write one module with a `Backend` subclass (see base.py) and add one line
here, or call `register()` (a test does this with a toy backend).
"""
from __future__ import annotations

from importlib import import_module

from kedge.runtime.backends.base import Backend
from kedge.runtime.errors import KedgeError

REGISTRY: dict[str, str | type[Backend]] = {
    "tensorrt": "kedge.runtime.backends.tensorrt:TensorRT",
    "openvino": "kedge.runtime.backends.openvino:OpenVINO",
    "onnxruntime": "kedge.runtime.backends.onnxruntime:OnnxRuntime",
}


def register(name: str, backend: str | type[Backend]) -> None:
    """Add (or replace) a backend: a `Backend` subclass or its "module:Class" path."""
    REGISTRY[name] = backend


def names() -> list[str]:
    return list(REGISTRY)


def backend_class(name: str) -> type[Backend]:
    entry = REGISTRY.get(name)
    if entry is None:
        raise KedgeError(f"--backend {name!r}: choose from auto, {', '.join(REGISTRY)}")
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = getattr(import_module(module), attribute)
        REGISTRY[name] = entry
    assert isinstance(entry, type) and issubclass(entry, Backend)
    return entry
