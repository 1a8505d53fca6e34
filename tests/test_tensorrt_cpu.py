"""What a CPU can check of kedge's TensorRT and CUDA code (no GPU here, none in CI).

The ctypes prototypes of the CUDA graph calls are compared with the driver API's C
declarations; the engine builder's choices (network flags, timing-cache key) are
checked as plain functions. The fakes below stand in for pycuda and TensorRT objects
only to check kedge's own call order (context pushed around every call, one execution
context per captured batch size, the fallback after a failed capture); they prove
nothing about TensorRT or CUDA themselves, which only a device run can.
"""
from __future__ import annotations

import ctypes
import re
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from kedge.runtime.errors import KedgeError

HEADER = Path(__file__).parent / "cuda_graph_api.h"  # not in tests/data/: .gitignore keeps data/ out
OPAQUE_HANDLES = {"CUstream", "CUgraph", "CUgraphExec"}
INT_TYPES = {"CUresult", "CUstreamCaptureMode", "CUstreamCaptureStatus", "int"}


def _ctype_for(c_type: str):
    """The ctypes type a C parameter type must be given as."""
    c_type = c_type.replace("const ", "").strip()
    if c_type.endswith("*"):
        base = c_type[:-1].strip()
        if base.endswith("*") or base in OPAQUE_HANDLES:  # pointer to a handle or to a char*
            return ctypes.POINTER(ctypes.c_char_p if base.startswith("char") else ctypes.c_void_p)
        return ctypes.POINTER(ctypes.c_int) if base in INT_TYPES else None
    if c_type in OPAQUE_HANDLES:
        return ctypes.c_void_p
    if c_type in INT_TYPES:
        return ctypes.c_int
    return {"unsigned long long": ctypes.c_ulonglong}.get(c_type)


def _declarations() -> dict[str, list[str]]:
    out = {}
    for name, params in re.findall(r"CUresult CUDAAPI (\w+)\(([^)]*)\);", HEADER.read_text()):
        out[name] = [re.sub(r"\s*\w+$", "", p.strip()).strip() for p in params.split(",")]
    return out


def test_cuda_graph_prototypes_match_the_driver_api_declarations() -> None:
    from kedge.runtime.cuda import GRAPH_API

    declared = _declarations()
    assert set(GRAPH_API) == set(declared), "every graph call kedge makes is declared, and only those"
    for name, (restype, argtypes) in GRAPH_API.items():
        assert restype is ctypes.c_int, name
        expected = [_ctype_for(t) for t in declared[name]]
        assert None not in expected, f"{name}: unmapped C type in {declared[name]}"
        assert len(argtypes) == len(expected), f"{name}: {len(argtypes)} arguments, the driver API has {len(expected)}"
        for got, want, c_type in zip(argtypes, expected, declared[name], strict=True):
            assert got == want, f"{name}: {c_type} given as {got}, needs {want}"


def test_graph_calls_without_a_driver_fail_with_a_kedge_error(monkeypatch) -> None:
    from kedge.runtime import cuda

    monkeypatch.setattr(cuda, "_libcuda", lambda: None)
    cuda._graph_api.cache_clear()
    try:
        with pytest.raises(cuda.GraphError, match="no CUDA driver"):
            cuda.capture_graph(0, lambda: None)
    finally:
        cuda._graph_api.cache_clear()


class _FakeDriver:
    """pycuda.driver's shape, recording push/pop per thread (call order only)."""

    def __init__(self, calls: list[str]) -> None:
        calls_ref = calls

        class _Ctx:
            def push(self) -> None:
                calls_ref.append(f"push:{threading.current_thread().name}")

        class _Context:
            @staticmethod
            def pop() -> None:
                calls_ref.append(f"pop:{threading.current_thread().name}")

        self.Context = _Context
        self.ctx = _Ctx()


def _context_with(calls: list[str]):
    from kedge.runtime.cuda import Context

    driver = _FakeDriver(calls)
    context = Context.__new__(Context)
    context._cuda, context._context = driver, driver.ctx
    return context


def test_context_is_pushed_and_popped_around_work_even_when_it_fails() -> None:
    calls: list[str] = []
    context = _context_with(calls)
    with context.active():
        calls.append("work")
    with pytest.raises(RuntimeError), context.active():
        calls.append("failing work")
        raise RuntimeError("boom")
    me = threading.current_thread().name
    assert calls == [f"push:{me}", "work", f"pop:{me}", f"push:{me}", "failing work", f"pop:{me}"]


class _FakeCuda:
    """Stands in for kedge.runtime.cuda.Context: records the order of kedge's calls."""

    def __init__(self, calls: list[str], capture_fails: bool = False) -> None:
        self.calls, self.capture_fails, self.active_depth = calls, capture_fails, 0
        self.stream_handle = 7

    def active(self):
        import contextlib

        @contextlib.contextmanager
        def block():
            self.calls.append(f"push:{threading.current_thread().name}")
            self.active_depth += 1
            try:
                yield
            finally:
                self.active_depth -= 1
                self.calls.append(f"pop:{threading.current_thread().name}")
        return block()

    def to_device(self, dev, host) -> None:
        assert self.active_depth == 1, "copy outside the pushed context"

    def to_host(self, host, dev) -> None:
        host[:] = 0.5

    def synchronize(self) -> None:
        pass

    def capture(self, work):
        from kedge.runtime.cuda import GraphError

        work()
        if self.capture_fails:
            raise GraphError("cuStreamEndCapture failed: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED (901)")
        graph = SimpleNamespace(destroyed=False)
        graph.destroy = lambda: setattr(graph, "destroyed", True)
        return graph

    def replay(self, graph) -> None:
        self.calls.append("replay")


class _FakeExecutionContext:
    def __init__(self, calls: list[str], index: int) -> None:
        self.calls, self.index, self.shape = calls, index, None

    def set_input_shape(self, name, shape) -> bool:
        self.shape = shape
        return shape[0] <= 4  # the profile's max

    def set_tensor_address(self, name, address) -> None:
        pass

    def execute_async_v3(self, stream) -> bool:
        self.calls.append(f"execute ctx{self.index} batch{self.shape[0]}")
        return True


def _backend(calls: list[str], cuda_graph: bool, capture_fails: bool = False):
    from kedge.runtime.backends.tensorrt import TensorRTSession

    contexts: list[_FakeExecutionContext] = []

    def create_execution_context():
        contexts.append(_FakeExecutionContext(calls, len(contexts)))
        return contexts[-1]

    backend = TensorRTSession.__new__(TensorRTSession)
    backend.name = "tensorrt fake"
    backend._cuda = _FakeCuda(calls, capture_fails)
    backend._engine = SimpleNamespace(create_execution_context=create_execution_context)
    backend._input, backend._output, backend._max_batch = "image", "probabilities", 4
    backend._host_in = np.zeros((4, 2, 2, 3), np.float32)
    backend._host_out = np.zeros((4, 2), np.float32)
    backend._dev_in = backend._dev_out = 0
    backend._context = create_execution_context()
    backend._context.set_input_shape("image", (4, 2, 2, 3))
    backend._shape_batch = 4
    backend._graphs = {} if cuda_graph else None
    backend._graph_contexts = {}
    return backend, contexts


def test_infer_pushes_the_context_on_the_calling_thread() -> None:
    calls: list[str] = []
    backend, _ = _backend(calls, cuda_graph=False)
    worker = threading.Thread(target=lambda: backend.infer(np.zeros((6, 2, 2, 3), np.float32)), name="triton-worker")
    worker.start()
    worker.join()
    assert calls == ["push:triton-worker", "execute ctx0 batch4", "execute ctx0 batch2", "pop:triton-worker"]


def test_each_captured_batch_size_gets_its_own_execution_context() -> None:
    calls: list[str] = []
    backend, contexts = _backend(calls, cuda_graph=True)
    for n in (2, 3, 2):
        backend.infer(np.zeros((n, 2, 2, 3), np.float32))
    assert [c.shape[0] for c in contexts[1:]] == [2, 3]  # ctx0 is the plain one; one more per captured size
    assert backend._graph_contexts == {2: contexts[1], 3: contexts[2]}
    assert calls.count("replay") == 3
    assert "execute ctx0 batch2" not in calls  # the shared context's shape never changes under a graph


def test_a_failed_capture_falls_back_to_plain_launches(capsys) -> None:
    calls: list[str] = []
    backend, _ = _backend(calls, cuda_graph=True, capture_fails=True)
    out = backend.infer(np.zeros((2, 2, 2, 3), np.float32))
    assert out.shape == (2, 2)
    assert backend._graphs is None
    assert "running without CUDA graphs" in capsys.readouterr().err
    assert calls[-2:] == ["execute ctx0 batch2", f"pop:{threading.current_thread().name}"]
    backend.infer(np.zeros((3, 2, 2, 3), np.float32))
    assert "replay" not in calls


def test_an_input_shape_tensorrt_refuses_is_an_error() -> None:
    backend, _ = _backend([], cuda_graph=False)
    backend._max_batch = 8  # a chunk of 5 reaches the fake profile's limit of 4
    backend._host_in = np.zeros((8, 2, 2, 3), np.float32)
    with pytest.raises(KedgeError, match="refused input shape batch 5"):
        backend.infer(np.zeros((5, 2, 2, 3), np.float32))


def _engine_info(**extra: object) -> Any:
    from kedge.runtime.bundle.engines import EngineInfo

    return EngineInfo(model="m", precision="fp16", tensorrt_version="10.3.0.26", gpu_name="Orin",
                      compute_capability="8.7", source_onnx="model.onnx", source_onnx_sha256="ab" * 32,
                      build_path="flags", batch={"min": 1, "opt": 1, "max": 8}, workspace_mib=None,
                      build_seconds=1.0, built_at="2026-12-06T00:00:00+00:00", **extra)  # type: ignore[arg-type]


def test_engine_whose_bytes_changed_since_it_was_built_is_refused_before_deserializing() -> None:
    import hashlib

    from kedge.runtime.bundle.engines import check_engine_bytes

    built = b"\x00engine bytes" * 100
    info = _engine_info(engine_sha256=hashlib.sha256(built).hexdigest())
    check_engine_bytes("b/engines/x.engine", built, info)
    for damaged in (built[:-7], built[:50] + b"\xff" + built[51:]):
        with pytest.raises(KedgeError, match=r"^b/engines/x.engine: sha256 .* recorded when it was built .* rebuild"):
            check_engine_bytes("b/engines/x.engine", damaged, info)
    check_engine_bytes("b/engines/x.engine", built[:-7], _engine_info())  # an older sidecar: nothing to check


def test_an_engine_rebuilt_in_place_is_a_new_identity(monkeypatch, tmp_path) -> None:
    """The per-machine golden check is cached by each pair's identity: an engine rebuilt under
    the same name from the same ONNX must not inherit the old engine's verdict. Only the GPU
    locator is replaced (it needs a device); identity reads the real sidecar."""
    from kedge.runtime.backends.tensorrt import TensorRT
    from kedge.runtime.bundle.engines import write_sidecar
    from kedge.runtime.bundle.forms import FORMS

    engine = tmp_path / "engines" / "m.fp16.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"built once")
    monkeypatch.setattr("kedge.runtime.backends.tensorrt.engine_path", lambda bundle, precision: engine)
    backend = TensorRT(SimpleNamespace(path=tmp_path), FORMS["onnx-fp16"], "fp16")  # type: ignore[arg-type]
    write_sidecar(engine, _engine_info(engine_sha256="11" * 32))
    first = backend.identity()
    write_sidecar(engine, _engine_info(engine_sha256="22" * 32))  # rebuilt in place: same name, same ONNX
    assert backend.identity() != first and "ab" * 32 in first and "11" * 32 in first


def test_engine_from_another_patch_release_is_refused() -> None:
    from kedge.runtime.bundle.engines import check_compatible

    info = _engine_info()
    check_compatible("b/engines/x.engine", info, "10.3.0.26", "8.7")
    with pytest.raises(KedgeError, match=r"built with TensorRT 10\.3\.0\.26, this machine has 10\.3\.0\.30"):
        check_compatible("b/engines/x.engine", info, "10.3.0.30", "8.7")


def test_network_flags_drop_strongly_typed_on_tensorrt_11() -> None:
    from kedge.export.engine import network_flags

    def trt(version: str):
        return SimpleNamespace(__version__=version,
                               NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))

    assert network_flags(trt("11.1.0"), "strongly-typed") == 0
    assert network_flags(trt("10.3.0"), "strongly-typed") == 2
    assert network_flags(trt("10.3.0"), "flags") == 0


def test_timing_cache_is_keyed_by_gpu_name_too() -> None:
    from kedge.export.engine import timing_cache_name

    agx = timing_cache_name("10.3.0.30", "Orin (nvgpu) AGX", "8.7")
    nano = timing_cache_name("10.3.0.30", "Orin Nano", "8.7")
    assert agx != nano
    assert nano == "timing.trt10.3.0.30.orin-nano.sm87.cache"
