"""ONNX Runtime backend: the CPU default everywhere, CUDA where onnxruntime-gpu has it.

Providers are always passed explicitly. onnxruntime-gpu lists the CUDA provider
even on a machine without a GPU, so "CUDA available" is decided by the provider list
and the driver seeing a device, never by the list alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.backends.base import EVERY_ONNX_FORM, Backend, Session
from kedge.runtime.errors import KedgeError, first_line

CPU = "CPUExecutionProvider"
OPTIMIZATION_LEVELS = {
    "basic": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": lambda ort: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
CUDA = "CUDAExecutionProvider"


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise KedgeError("onnxruntime is not installed; install kedge[cpu]") from None
    return ort


def available_providers() -> list[str]:
    """Providers this onnxruntime build lists (not all are usable: see `choose_providers`)."""
    return list(_ort().get_available_providers())


def choose_providers(device: str = "auto") -> list[str]:
    """`cpu`: CPU only. `cuda`: CUDA then CPU, or an error. `auto`: CUDA when onnxruntime
    has it and a GPU is visible, else CPU."""
    from kedge.runtime.cuda import has_gpu

    if device == "cpu":
        return [CPU]
    cuda_usable = CUDA in available_providers() and has_gpu()
    if device == "cuda" and not cuda_usable:
        raise KedgeError("ONNX Runtime cannot use CUDA here (needs onnxruntime-gpu and a visible NVIDIA GPU)")
    return [CUDA, CPU] if cuda_usable else [CPU]


class OnnxRuntimeSession(Session):
    """One ONNX file in an InferenceSession. `optimization` is ONNX Runtime's graph
    optimisation level (default: all, ORT's own default)."""

    def __init__(self, path: str | os.PathLike[str], providers: list[str] | None = None,
                 threads: int | None = None, label: str | None = None, optimization: str = "all") -> None:
        ort = _ort()
        path = Path(path)
        if not path.is_file():
            raise KedgeError(f"{path}: no such ONNX model")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; warnings about unused initializers are noise here
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization](ort)
        providers = providers or [CPU]
        model: str | bytes = str(path)
        if label == "onnx-fp16" and providers[0] == CPU:
            model = widened_to_fp32(path)
        try:
            self._session = ort.InferenceSession(model, options, providers=providers)
        except Exception as err:  # ORT raises its own exception types for corrupt or unsupported models
            raise KedgeError(f"{path}: ONNX Runtime could not load it ({first_line(err)})") from None
        self._input = self._session.get_inputs()[0].name
        self.providers = self._session.get_providers()
        self.device = "cuda" if self.providers[0] == CUDA else "cpu"
        self.form = label or path.name
        self.name = f"onnxruntime:{self.device} {self.form}"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input: np.ascontiguousarray(batch, np.float32)})[0])

    def close(self) -> None:
        self._session = None


FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto element types


def widened_to_fp32(path: Path) -> str | bytes:
    """The FP16 ONNX with its weights widened to FP32 in memory, for ONNX Runtime's CPU
    provider: it has few FP16 kernels and would wrap most nodes in casts, so the file
    ships small (FP16 weights) and runs as an FP32 model with FP16-rounded weights.
    Without the onnx package, the file as it is."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return str(path)
    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and others for a damaged file
        raise KedgeError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None

    def widen_tensor(tensor: Any) -> None:
        if tensor.data_type == FLOAT16:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))

    def widen_graph(graph: Any) -> None:
        for tensor in graph.initializer:
            widen_tensor(tensor)
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.tensor_type.elem_type == FLOAT16:
                value.type.tensor_type.elem_type = FLOAT
        for node in graph.node:
            for attribute in node.attribute:
                if node.op_type == "Cast" and attribute.name == "to" and attribute.i == FLOAT16:
                    attribute.i = FLOAT
                if attribute.HasField("t"):
                    widen_tensor(attribute.t)
                if attribute.HasField("g"):
                    widen_graph(attribute.g)
                for subgraph in attribute.graphs:
                    widen_graph(subgraph)

    widen_graph(model.graph)
    return bytes(model.SerializeToString())


class OnnxRuntime(Backend):
    """The plug-in: every ONNX form, on CUDA when onnxruntime-gpu sees a GPU, else the CPU.
    Options: `device` (auto|cpu|cuda), `optimization` (basic|extended|all)."""

    name, device, forms = "onnxruntime", "cpu or cuda", EVERY_ONNX_FORM
    title = "ONNX Runtime"
    runtime = staticmethod(_ort)

    @classmethod
    def info(cls) -> dict[str, Any] | None:
        """Its version, the providers this build lists and the ones kedge would use (None: not installed)."""
        try:
            providers = available_providers()
        except KedgeError:
            return None
        return {"version": _ort().__version__, "providers": providers, "would_use": choose_providers("auto")}

    @classmethod
    def describe(cls, info: dict[str, Any] | None) -> str:
        if info is None:
            return "not installed (pip install kedge[cpu])"
        return f"{info['version']}, providers {', '.join(info['providers'])}; kedge uses {', '.join(info['would_use'])}"

    @classmethod
    def version(cls) -> str:
        return f"ONNX Runtime {_ort().__version__}"

    def open(self) -> Session:
        return OnnxRuntimeSession(self.locate(), choose_providers(self.options.get("device", "auto")), self.threads,
                                  label=self.form.name, optimization=self.options.get("optimization", "all"))
