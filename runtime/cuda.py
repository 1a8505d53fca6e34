"""The only module that touches CUDA (through pycuda): device facts and device memory.

pycuda comes from the [gpu] extra, or is built against JetPack's CUDA on a Jetson.
Nothing here is imported unless a TensorRT path is taken, so machines without a GPU
never need it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kedge.runtime.errors import KedgeError


@dataclass(frozen=True)
class Device:
    name: str
    compute_capability: str  # "8.7"
    total_memory_mib: int


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


def has_gpu() -> bool:
    """True when pycuda is importable and CUDA sees at least one device."""
    try:
        return int(_driver().Device.count()) > 0
    except KedgeError:
        return False


def device(index: int = 0) -> Device:
    cuda = _driver()
    if index >= cuda.Device.count():
        raise KedgeError(f"no CUDA device {index} (found {cuda.Device.count()})")
    dev = cuda.Device(index)
    major, minor = dev.compute_capability()
    return Device(str(dev.name()), f"{major}.{minor}", int(dev.total_memory()) >> 20)


class Context:
    """A CUDA context made current for the lifetime of a backend (retained primary context)."""

    def __init__(self, index: int = 0) -> None:
        cuda = _driver()
        self._cuda = cuda
        self._context = cuda.Device(index).retain_primary_context()
        self._context.push()
        self.stream = cuda.Stream()

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

    def close(self) -> None:
        if self._context is not None:
            self.stream.synchronize()
            self._context.pop()
            self._context = None
