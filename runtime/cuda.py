"""The only module that touches CUDA: device facts, device memory, streams, graphs.

Device discovery (`gpu_count`, `device_summary`) and CUDA graphs ask the CUDA driver
library directly through ctypes, so `kedge info` and ONNX Runtime's provider choice
work without pycuda, and graphs work with every pycuda release (pycuda has no graph
API at all, 2020.1 to 2026.1). Memory, copies and streams go through pycuda (the
[gpu] extra, or built against JetPack's CUDA on a Jetson). Swapping pycuda for
cuda-python means rewriting this file only; nothing else imports pycuda.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from kedge.runtime.errors import KedgeError


@dataclass(frozen=True)
class Device:
    name: str
    compute_capability: str  # "8.7"
    total_memory_mib: int


@cache
def _libcuda() -> Any:
    """The CUDA driver library, initialised; None where there is no driver or no GPU."""
    for name in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda"), "nvcuda.dll"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        return lib if lib.cuInit(0) == 0 else None
    return None


def gpu_count() -> int:
    """CUDA devices the driver sees (0 without a driver); needs no pycuda."""
    lib = _libcuda()
    count = ctypes.c_int(0)
    if lib is None or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def device_summary(index: int = 0) -> Device | None:
    """Name, compute capability and memory of a GPU from the driver (no pycuda); None without one."""
    lib = _libcuda()
    if lib is None or index >= gpu_count():
        return None
    handle, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    memory = ctypes.c_size_t()
    lib.cuDeviceGet(ctypes.byref(handle), index)
    lib.cuDeviceGetName(name, 256, handle)
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, handle)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, handle)  # ..._MINOR
    lib.cuDeviceTotalMem_v2(ctypes.byref(memory), handle)
    return Device(name.value.decode(errors="replace"), f"{major.value}.{minor.value}", int(memory.value) >> 20)


def has_gpu() -> bool:
    return gpu_count() > 0


def _driver() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise KedgeError(f"pycuda is not installed ({err}); install the [gpu] extra, or on a Jetson build "
                         "pycuda against JetPack's CUDA") from None
    try:
        cuda.init()
    except cuda.Error as err:
        raise KedgeError(f"CUDA could not start ({err}); is there an NVIDIA GPU and driver?") from None
    return cuda


def device(index: int = 0) -> Device:
    summary = device_summary(index)
    if summary is None:
        raise KedgeError(f"no CUDA device {index} (found {gpu_count()}); is there an NVIDIA GPU and driver?")
    return summary


# The CUDA graph calls kedge makes, with their driver API prototypes (cuda.h, CUDA 11.4+;
# every handle type is an opaque pointer, CUresult and the enums are C ints). The
# `_v2` name is the symbol libcuda exports for cuStreamBeginCapture with a mode.
GRAPH_API: dict[str, tuple[Any, list[Any]]] = {
    "cuStreamBeginCapture_v2": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),  # (CUstream, CUstreamCaptureMode)
    "cuStreamEndCapture": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]),  # (CUstream, CUgraph*)
    "cuStreamIsCapturing": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]),
    "cuGraphInstantiateWithFlags": (ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                                   ctypes.c_ulonglong]),  # (CUgraphExec*, CUgraph, flags)
    "cuGraphLaunch": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]),  # (CUgraphExec, CUstream)
    "cuGraphExecDestroy": (ctypes.c_int, [ctypes.c_void_p]),
    "cuGraphDestroy": (ctypes.c_int, [ctypes.c_void_p]),
    "cuGetErrorName": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]),
}
# CU_STREAM_CAPTURE_MODE_THREAD_LOCAL: only this thread's unsafe calls break the capture
# (the mode trtexec uses); another thread's work (PyTriton's) cannot invalidate it.
CAPTURE_MODE_THREAD_LOCAL = 1


class GraphError(KedgeError):
    """A CUDA graph could not be captured or launched; the caller runs without graphs."""


@cache
def _graph_api() -> Any:
    """libcuda with the graph calls' prototypes set (ctypes would otherwise pass ints)."""
    lib = _libcuda()
    if lib is None:
        raise GraphError("no CUDA driver: CUDA graphs need libcuda")
    for name, (restype, argtypes) in GRAPH_API.items():
        function = getattr(lib, name, None)
        if function is None:
            raise GraphError(f"this CUDA driver has no {name} (CUDA graphs need a CUDA 11.4 or newer driver)")
        function.restype, function.argtypes = restype, argtypes
    return lib


def _check(lib: Any, result: int, call: str) -> None:
    if result != 0:
        name = ctypes.c_char_p()
        lib.cuGetErrorName(result, ctypes.byref(name))
        raise GraphError(f"{call} failed: {(name.value or b'CUDA error').decode()} ({result})")


class Graph:
    """An instantiated CUDA graph (CUgraphExec) and the graph it came from."""

    def __init__(self, lib: Any, graph: ctypes.c_void_p, executable: ctypes.c_void_p) -> None:
        self._lib, self._graph = lib, graph
        self._exec: ctypes.c_void_p | None = executable

    def launch(self, stream_handle: int) -> None:
        _check(self._lib, self._lib.cuGraphLaunch(self._exec, ctypes.c_void_p(stream_handle)), "cuGraphLaunch")

    def destroy(self) -> None:
        if self._exec is not None:
            self._lib.cuGraphExecDestroy(self._exec)
            self._lib.cuGraphDestroy(self._graph)
            self._exec = None


def capture_graph(stream_handle: int, work: Callable[[], None]) -> Graph:
    """Record `work()` (copies and launches on the stream) as a CUDA graph and instantiate it.

    The capture is always ended, even when `work` or the capture fails, so the stream is
    usable again and the caller can fall back to plain launches (as trtexec does: TensorRT
    networks with loops or some plugins are not capturable).
    """
    lib = _graph_api()
    stream = ctypes.c_void_p(stream_handle)
    _check(lib, lib.cuStreamBeginCapture_v2(stream, CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture")
    graph = ctypes.c_void_p()
    try:
        work()
    finally:
        ended = lib.cuStreamEndCapture(stream, ctypes.byref(graph))  # also ends an invalidated capture
    try:
        _check(lib, ended, "cuStreamEndCapture")
        executable = ctypes.c_void_p()
        _check(lib, lib.cuGraphInstantiateWithFlags(ctypes.byref(executable), graph, 0),
               "cuGraphInstantiateWithFlags")
    except GraphError:
        if graph.value:
            lib.cuGraphDestroy(graph)
        raise
    return Graph(lib, graph, executable)


class Context:
    """The device's retained primary CUDA context, and one stream every copy and launch goes through.

    The context is current only inside `active()`: a backend enters it around every call
    (construction, `infer`, `close`), because the thread that calls `infer` (PyTriton's
    worker, a thread pool) is not the one that built the backend, and a CUDA context is
    current per thread.
    """

    def __init__(self, index: int = 0) -> None:
        cuda = _driver()
        self._cuda = cuda
        self._context: Any = cuda.Device(index).retain_primary_context()
        with self.active():
            self.stream = cuda.Stream()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make the context current on this thread for the block, then restore the previous one."""
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def host_buffer(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """Page-locked host memory, so copies to and from the GPU can be asynchronous."""
        return self._cuda.pagelocked_empty(shape, dtype)

    def device_buffer(self, nbytes: int) -> Any:
        return self._cuda.mem_alloc(max(int(nbytes), 1))

    def to_device(self, device_buffer: Any, host: Any) -> None:
        self._cuda.memcpy_htod_async(device_buffer, host, self.stream)

    def to_host(self, host: Any, device_buffer: Any) -> None:
        self._cuda.memcpy_dtoh_async(host, device_buffer, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def capture(self, work: Callable[[], None]) -> Graph:
        """`work()` on this stream as a replayable CUDA graph (see `capture_graph`)."""
        return capture_graph(self.stream_handle, work)

    def replay(self, graph: Graph) -> None:
        graph.launch(self.stream_handle)

    def close(self) -> None:
        """Wait for the stream; the primary context is released when pycuda drops its last reference."""
        if self._context is not None:
            with self.active():
                self.stream.synchronize()
            self._context = None
