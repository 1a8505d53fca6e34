"""The only module that touches CUDA: device facts, device memory, streams, graphs.

Device discovery (`gpu_count`, `device_summary`) asks the CUDA driver library
directly through ctypes, so `kedge info` and ONNX Runtime's provider choice work
without pycuda. Memory, copies, streams and CUDA graphs go through pycuda (the [gpu]
extra, or built against JetPack's CUDA on a Jetson). Swapping pycuda for
cuda-python means rewriting this file only; nothing else imports pycuda.
"""
from __future__ import annotations

import ctypes
import ctypes.util
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


class Context:
    """A CUDA context made current for the lifetime of a backend (the retained primary
    context), with one stream that every copy and launch goes through."""

    def __init__(self, index: int = 0) -> None:
        cuda = _driver()
        self._cuda = cuda
        self._context = cuda.Device(index).retain_primary_context()
        self._context.push()
        self.stream = cuda.Stream()

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

    def capture(self, work: Any) -> Any:
        """Record `work()` (copies and launches on this stream) as a CUDA graph; returns a
        replayable graph, launched with `replay`. Needs pycuda with graph support (2022.1+)."""
        if not hasattr(self.stream, "begin_capture"):
            raise KedgeError("CUDA graphs need pycuda 2022.1 or newer; run without --cuda-graph")
        self.stream.begin_capture()
        try:
            work()
        finally:
            graph = self.stream.end_capture()
        return graph.instance()

    def replay(self, graph: Any) -> None:
        graph.launch(self.stream)

    def close(self) -> None:
        if self._context is not None:
            self.stream.synchronize()
            self._context.pop()
            self._context = None
