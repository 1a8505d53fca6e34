"""TensorRT backend (tensorrt + pycuda): deserialize an engine kedge built, run batches.

The engine's sidecar is checked against this machine's TensorRT version and GPU
before anything is deserialized, so a mismatched engine gets a one-line error that
says how to rebuild it instead of a TensorRT crash. Buffers are allocated once, for
the profile's largest batch; bigger batches are run in chunks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.backends.base import Backend, Session
from kedge.runtime.engines import check_compatible, read_sidecar, rebuild_command
from kedge.runtime.errors import KedgeError


def tensorrt_module() -> Any:
    """The real tensorrt module, or a KedgeError (type stubs alone leave a bare namespace)."""
    trt: Any
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
    if trt is None or not hasattr(trt, "Runtime") or not hasattr(trt, "__version__"):
        raise KedgeError("TensorRT is not installed (install kedge[gpu], or on a Jetson use JetPack's "
                         "python3-libnvinfer with a --system-site-packages virtual environment)")
    return trt


class TensorRTBackend(Session):
    """One engine, one execution context, one stream; buffers allocated once.

    `onnx_sha256` is the bundle's current source ONNX: an engine built from another
    file is refused. `cuda_graph` records the copy-in, execution and copy-out of each
    batch size once and replays it after that (the fixed-batch case, where launch
    overhead matters on small models)."""

    def __init__(self, engine_path: str | os.PathLike[str], onnx_sha256: str | None = None,
                 cuda_graph: bool = False) -> None:
        from kedge.runtime.cuda import Context, device

        trt = tensorrt_module()
        path = Path(engine_path)
        if not path.is_file():
            raise KedgeError(f"{path}: no such engine")
        info = read_sidecar(path)
        check_compatible(path, info, trt.__version__, device().compute_capability, onnx_sha256)
        self._cuda = Context()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise KedgeError(f"{path}: TensorRT could not deserialize the engine (corrupt file?); rebuild it "
                                 f"with `{rebuild_command(path, info.precision)}`")
            self._context = self._engine.create_execution_context()
            self._input, self._output = info.input_name, info.output_name
            self._max_batch = int(self._engine.get_tensor_profile_shape(self._input, 0)[2][0])
            in_shape = (self._max_batch, *tuple(self._engine.get_tensor_shape(self._input))[1:])
            self._context.set_input_shape(self._input, in_shape)
            out_shape = tuple(self._context.get_tensor_shape(self._output))
            self._host_in = self._cuda.host_buffer(in_shape, trt.nptype(self._engine.get_tensor_dtype(self._input)))
            self._host_out = self._cuda.host_buffer(out_shape,
                                                    trt.nptype(self._engine.get_tensor_dtype(self._output)))
            self._dev_in = self._cuda.device_buffer(self._host_in.nbytes)
            self._dev_out = self._cuda.device_buffer(self._host_out.nbytes)
            self._context.set_tensor_address(self._input, int(self._dev_in))
            self._context.set_tensor_address(self._output, int(self._dev_out))
        except BaseException:
            self._cuda.close()
            raise
        self._shape_batch = self._max_batch
        self._graphs: dict[int, Any] | None = {} if cuda_graph else None
        self.info = info
        self.form = f"trt-{info.precision}"
        self.name = f"tensorrt {info.precision}{' cuda-graph' if cuda_graph else ''} ({path.name})"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        outputs = [self._infer_chunk(batch[start : start + self._max_batch])
                   for start in range(0, len(batch), self._max_batch)]
        return np.concatenate(outputs) if outputs else np.zeros((0, self._host_out.shape[1]), np.float32)

    def _infer_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        self._host_in[:n] = chunk
        if n != self._shape_batch:
            self._context.set_input_shape(self._input, (n, *self._host_in.shape[1:]))
            self._shape_batch = n
        if self._graphs is None:
            self._enqueue(n)
        else:
            if n not in self._graphs:
                self._enqueue(n)  # TensorRT finishes shape-dependent setup on the first run, outside the capture
                self._cuda.synchronize()
                self._graphs[n] = self._cuda.capture(lambda: self._enqueue(n))
            self._cuda.replay(self._graphs[n])
        self._cuda.synchronize()
        return np.array(self._host_out[:n], dtype=np.float32)

    def _enqueue(self, n: int) -> None:
        """Copy in, execute and copy out on the one stream, all asynchronous."""
        self._cuda.to_device(self._dev_in, self._host_in[:n])
        if not self._context.execute_async_v3(self._cuda.stream_handle):
            raise KedgeError(f"{self.name}: TensorRT execution failed")
        self._cuda.to_host(self._host_out[:n], self._dev_out)

    def close(self) -> None:
        if getattr(self, "_cuda", None) is not None:
            self._graphs = None
            self._context = self._engine = None
            self._dev_in.free()
            self._dev_out.free()
            self._cuda.close()
            self._cuda = None


class TensorRT(Backend):
    """The plug-in: this machine's engines of the bundle (see runtime/engines.py for discovery).
    Option: `cuda_graph`."""

    name, device, forms = "tensorrt", "cuda", ("trt-fp32", "trt-fp16", "trt-int8")

    @classmethod
    def problem(cls) -> str | None:
        from kedge.runtime.engines import tensorrt_usable

        return None if tensorrt_usable() else "needs TensorRT, pycuda and a visible NVIDIA GPU (see `kedge info`)"

    @classmethod
    def version(cls) -> str:
        return f"TensorRT {tensorrt_module().__version__}"

    def locate(self) -> Path:
        from kedge.runtime.engines import engine_path

        path = engine_path(self.bundle, self.form.precision)
        if path is None:
            flag = "" if self.form.precision == "fp32" else f" --{self.form.precision}"
            raise KedgeError(f"{self.bundle.path}: no {self.form.precision} engine; build one on this device with "
                             f"`kedge export {self.bundle.path} --engine{flag}`")
        return path

    def open(self) -> Session:
        from kedge.runtime.engines import source_sha256

        path = self.locate()
        return TensorRTBackend(path, source_sha256(self.bundle, read_sidecar(path).source_onnx),
                               bool(self.options.get("cuda_graph", False)))
