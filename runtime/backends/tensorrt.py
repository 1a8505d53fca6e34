"""TensorRT backend (tensorrt + pycuda): deserialize an engine kedge built, run batches.

The engine's sidecar is checked against this machine's TensorRT version and GPU
before anything is deserialized, so a mismatched engine gets a one-line error that
says how to rebuild it instead of a TensorRT crash. Buffers are allocated once, for
the profile's largest batch; bigger batches are run in chunks. The CUDA context is
made current around every call, so `infer` works from any thread (PyTriton's).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.backends.base import Backend, Session
from kedge.runtime.bundle.engines import (
    check_compatible,
    check_engine_bytes,
    engine_path,
    read_sidecar,
    rebuild_command,
    source_sha256,
    tensorrt_module,
    tensorrt_usable,
)
from kedge.runtime.bundle.forms import FORMS, Form
from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.errors import KedgeError


class TensorRTSession(Session):
    """One engine, one stream, buffers allocated once; one execution context per batch shape.

    `onnx_sha256` is the bundle's current source ONNX: an engine built from another
    file is refused. `cuda_graph` records the copy-in, execution and copy-out of each
    batch size once and replays it after that (the fixed-batch case, where launch
    overhead matters on small models). Each captured batch size gets its own execution
    context, because TensorRT leaves replaying a graph after its context's input shape
    changed undefined. When a capture fails (TensorRT networks with loops may not be
    capturable), the backend says so once and runs without graphs, as trtexec does."""

    def __init__(self, engine_path: str | os.PathLike[str], onnx_sha256: str | None = None,
                 cuda_graph: bool = False) -> None:
        from kedge.runtime.cuda import Context, device

        trt = tensorrt_module()
        path = Path(engine_path)
        if not path.is_file():
            raise KedgeError(f"{path}: no such engine")
        info = read_sidecar(path)
        check_compatible(path, info, trt.__version__, device().compute_capability, onnx_sha256)
        self.name = f"tensorrt {info.precision}{' cuda-graph' if cuda_graph else ''} ({path.name})"
        self._cuda = Context()
        try:
            with self._cuda.active():
                self._load(trt, path, info)
        except BaseException:
            self._cuda.close()
            raise
        self._graphs: dict[int, Any] | None = {} if cuda_graph else None
        self.info = info
        self.form = f"trt-{info.precision}"

    def _load(self, trt: Any, path: Path, info: Any) -> None:
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        data = path.read_bytes()
        check_engine_bytes(path, data, info)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(data)
        if self._engine is None:
            raise KedgeError(f"{path}: TensorRT could not deserialize the engine (corrupt file?); rebuild it "
                             f"with `{rebuild_command(path, info.precision)}`")
        self._input, self._output = info.input_name, info.output_name
        self._max_batch = int(self._engine.get_tensor_profile_shape(self._input, 0)[2][0])
        in_shape = (self._max_batch, *tuple(self._engine.get_tensor_shape(self._input))[1:])
        self._host_in = self._cuda.host_buffer(in_shape, trt.nptype(self._engine.get_tensor_dtype(self._input)))
        self._dev_in = self._cuda.device_buffer(self._host_in.nbytes)
        self._context = self._engine.create_execution_context()
        self._bind(self._context, self._max_batch, allocate_output=True)
        self._shape_batch = self._max_batch
        self._graph_contexts: dict[int, Any] = {}

    def _bind(self, context: Any, n: int, allocate_output: bool = False) -> None:
        """Set a context's input shape (checked) and point it at the shared buffers."""
        if not context.set_input_shape(self._input, (n, *self._host_in.shape[1:])):
            raise KedgeError(f"{self.name}: TensorRT refused input shape batch {n} (profile 1..{self._max_batch})")
        if allocate_output:
            out_shape = tuple(context.get_tensor_shape(self._output))
            dtype = self._trt.nptype(self._engine.get_tensor_dtype(self._output))
            self._host_out = self._cuda.host_buffer(out_shape, dtype)
            self._dev_out = self._cuda.device_buffer(self._host_out.nbytes)
        context.set_tensor_address(self._input, int(self._dev_in))
        context.set_tensor_address(self._output, int(self._dev_out))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._cuda.active():
            outputs = [self._infer_chunk(batch[start : start + self._max_batch])
                       for start in range(0, len(batch), self._max_batch)]
        return np.concatenate(outputs) if outputs else np.zeros((0, self._host_out.shape[1]), np.float32)

    def _infer_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        self._host_in[:n] = chunk
        if self._graphs is not None and self._replay(n):
            self._cuda.synchronize()
            return np.array(self._host_out[:n], dtype=np.float32)
        if n != self._shape_batch:
            self._bind(self._context, n)
            self._shape_batch = n
        self._enqueue(self._context, n)
        self._cuda.synchronize()
        return np.array(self._host_out[:n], dtype=np.float32)

    def _replay(self, n: int) -> bool:
        """Replay batch size n's graph, capturing it (on its own context) the first time.
        False after a failed capture: graphs are then off for this backend."""
        from kedge.runtime.cuda import GraphError

        assert self._graphs is not None
        if n not in self._graphs:
            context = self._engine.create_execution_context()
            self._bind(context, n)
            self._enqueue(context, n)  # TensorRT finishes shape-dependent setup on the first run, outside capture
            self._cuda.synchronize()
            try:
                self._graphs[n] = self._cuda.capture(lambda: self._enqueue(context, n))
            except (GraphError, KedgeError) as err:
                print(f"kedge: {self.name}: CUDA graph capture failed ({err}); running without CUDA graphs",
                      file=sys.stderr)
                self._drop_graphs()
                return False
            self._graph_contexts[n] = context
        self._cuda.replay(self._graphs[n])
        return True

    def _enqueue(self, context: Any, n: int) -> None:
        """Copy in, execute and copy out on the one stream, all asynchronous."""
        self._cuda.to_device(self._dev_in, self._host_in[:n])
        if not context.execute_async_v3(self._cuda.stream_handle):
            raise KedgeError(f"{self.name}: TensorRT execution failed")
        self._cuda.to_host(self._host_out[:n], self._dev_out)

    def _drop_graphs(self) -> None:
        for graph in (self._graphs or {}).values():
            graph.destroy()
        self._graphs = None
        self._graph_contexts = {}

    def close(self) -> None:
        if getattr(self, "_cuda", None) is not None:
            with self._cuda.active():
                self._cuda.synchronize()
                self._drop_graphs()
                self._context = self._engine = None
                self._dev_in.free()
                self._dev_out.free()
            self._cuda.close()
            del self._cuda  # closed: a second close() finds no context (getattr above)


class TensorRT(Backend):
    """The plug-in: this machine's engines of the bundle (see runtime/bundle/engines.py for discovery).
    Option: `cuda_graph`."""

    name, device, forms = "tensorrt", "cuda", ("engine",)  # every engine row of forms.FORMS
    title = "TensorRT"

    @classmethod
    def problem(cls) -> str | None:
        return None if tensorrt_usable() else "needs TensorRT, pycuda and a visible NVIDIA GPU (see `kedge info`)"

    @classmethod
    def forms_in(cls, bundle: Bundle) -> list[Form]:
        """The engine forms with an engine built for this machine (an engine for another one is not runnable here)."""
        if not bundle.engines:
            return []
        found = []
        for spec in (f for f in FORMS.values() if cls.runs(f)):
            try:
                if engine_path(bundle, spec.precision) is not None:
                    found.append(spec)
            except KedgeError:
                continue
        return found

    @classmethod
    def version(cls) -> str:
        return f"TensorRT {tensorrt_module().__version__}"

    @classmethod
    def info(cls) -> dict[str, Any] | None:
        try:
            return {"version": tensorrt_module().__version__}
        except (KedgeError, OSError) as err:  # OSError: tensorrt installed but its libraries do not load
            return {"version": None, "problem": str(err)}

    def locate(self) -> Path:
        path = engine_path(self.bundle, self.form.precision)
        if path is None:
            flag = "" if self.form.precision == "fp32" else f" --{self.form.precision}"
            raise KedgeError(f"{self.bundle.path}: no {self.form.precision} engine; build one on this device with "
                             f"`kedge export {self.bundle.path} --engine{flag}`")
        return path

    def identity(self) -> str:
        """An engine's file name, the sha256 of the ONNX it was built from, and the engine's own
        sha256 its sidecar recorded at build: an engine rebuilt in place is new bytes (TensorRT
        builds are not deterministic), so its golden check runs again; loading checks the bytes
        against that sha256 (check_engine_bytes), so this needs no hashing here."""
        path = self.locate()
        info = read_sidecar(path)
        return f"{path.name}:{info.source_onnx_sha256}:{info.engine_sha256 or 'engine sha256 not recorded'}"

    def file_sha256(self) -> str | None:
        """The engine's sha256 its sidecar recorded at build (loading checked the bytes against
        it), so the audit trail does not read a large engine a second time."""
        path = self.locate()
        return read_sidecar(path).engine_sha256 or super().file_sha256()

    def open(self) -> Session:
        path = self.locate()
        return TensorRTSession(path, source_sha256(self.bundle, read_sidecar(path).source_onnx),
                               bool(self.options.get("cuda_graph", False)))
