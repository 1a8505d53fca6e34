"""OpenVINO backend: the bundle's ONNX forms run directly on the CPU, precision explicit.

OpenVINO's CPU plug-in runs float layers in bfloat16 by default on CPUs with AMX or
AVX512-BF16, so an "FP32" file silently becomes bf16. Here the precision is always
set: `fp32` (and the float remainder of INT8 and FP16 files) uses the f32
inference-precision hint, and `bf16` is a precision of its own, offered only where
the CPU has BF16 and, like every pair, used by `auto` only after it passed parity.

Compiled models are cached under ~/.cache/kedge/openvino/, keyed like engines: the
OpenVINO version, the CPU, the sha256 of the source ONNX, the precision and the
threads. The compile options are passed again on import: without them OpenVINO
imports a blob at its default (bf16) precision. Each blob's sha256 is recorded beside
it; a blob that does not match, or does not import, is deleted and compiled again from
the ONNX, so a damaged cache costs one compile and never changes an answer.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.backends.base import EVERY_ONNX_FORM, Backend, Session, cache_root
from kedge.runtime.errors import KedgeError, first_line

# Our precision names -> OpenVINO's inference-precision hint (None: OpenVINO's own default).
HINTS = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16", "default": None}


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise KedgeError("OpenVINO is not installed; install kedge[cpu] (x86-64 and aarch64)") from None
    return openvino


@functools.cache
def _core() -> Any:
    return _openvino().Core()


@functools.cache
def cpu_capabilities() -> tuple[str, ...]:
    """OpenVINO's view of this CPU: e.g. ('BF16', 'FP32', 'INT8', ...)."""
    return tuple(str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cpu_name() -> str:
    return str(_core().get_property("CPU", "FULL_DEVICE_NAME"))


class OpenVINOSession(Session):
    """One compiled model and one infer request (batch 1 latency is what matters here)."""

    def __init__(self, path: Path, source_sha256: str, precision: str, threads: int | None,
                 cache: Path | None, label: str) -> None:
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if HINTS[precision] is not None:
            config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        blob = None if cache is None else cache / blob_name(source_sha256, precision, threads)
        self._compiled = None if blob is None else _import_checked(blob, config)
        self.cached = self._compiled is not None
        if self._compiled is None:
            try:
                self._compiled = _core().compile_model(str(path), "CPU", config)
            except RuntimeError as err:  # OpenVINO raises RuntimeError with a long multi-line message
                raise KedgeError(f"{path}: OpenVINO could not load it ({first_line(err)})") from None
            if blob is not None:
                _write_blob(blob, self._compiled)
        self._request = self._compiled.create_infer_request()
        self.name = f"openvino:cpu {label} {precision}"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        result = self._request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return np.array(result[0], dtype=np.float32)

    def close(self) -> None:
        self._request = self._compiled = None


def blob_name(source_sha256: str, precision: str, threads: int | None) -> str:
    return f"{source_sha256[:32]}.{precision}.threads{threads or 0}.blob"


def _sidecar(blob: Path) -> Path:
    """`<blob>.sha256`: the blob's own sha256, written after the blob, so a blob without a
    matching one (changed on disk, cut short, or written by a run that was killed) is never used."""
    return blob.with_name(blob.name + ".sha256")


def _import_checked(blob: Path, config: dict[str, Any]) -> Any:
    """The compiled model in `blob` if its bytes match the sha256 recorded beside it and
    OpenVINO imports it; else None, with the blob and its record deleted so the caller
    compiles the ONNX again. A bad blob is never imported (a changed one can load and answer
    wrongly) and never blamed on the bundle's ONNX file, which was checked separately."""
    try:
        data = blob.read_bytes()
        recorded = _sidecar(blob).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        recorded, data = "", b""
    if data and hashlib.sha256(data).hexdigest() == recorded:
        try:
            return _core().import_model(io.BytesIO(data), "CPU", config)
        except RuntimeError:
            pass
    _discard(blob)
    return None


def _write_blob(blob: Path, compiled: Any) -> None:
    """Cache a compiled model: the blob, then its sha256 (both atomic). The cache only saves
    time, so a folder that cannot be written leaves the model compiled and uncached."""
    from kedge.runtime.bundle.manifest import atomic_path, atomic_write_text

    try:
        data = compiled.export_model().getvalue()
        with atomic_path(blob) as tmp:
            tmp.write_bytes(data)
        atomic_write_text(_sidecar(blob), hashlib.sha256(data).hexdigest() + "\n")
    except (OSError, RuntimeError):
        _discard(blob)


def _discard(blob: Path) -> None:
    for path in (_sidecar(blob), blob):
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def cache_folder() -> Path:
    """This OpenVINO version's and this CPU's compiled-model folder."""
    ov = _openvino()
    cpu = hashlib.sha256((cpu_name() + ",".join(cpu_capabilities())).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", cpu_name()).strip("-")[:40]
    return cache_root() / "openvino" / ov.__version__.split("-")[0] / f"{slug}-{cpu}"


class OpenVINO(Backend):
    """The plug-in: every ONNX form, on the CPU. Option `cache` (default True). Its baseline
    (precision "default", which bench times) is OpenVINO out of the box: no precision hint."""

    name, device, forms = "openvino", "cpu", EVERY_ONNX_FORM
    title = "OpenVINO"
    baseline = "LATENCY hint, no precision hint"
    runtime = staticmethod(_openvino)

    @classmethod
    def precisions(cls, form: Any) -> tuple[str, ...]:
        if form.precision == "fp32" and "BF16" in cpu_capabilities():
            return ("fp32", "bf16")
        return (form.precision,)

    @classmethod
    def version(cls) -> str:
        return f"OpenVINO {_openvino().__version__.split('-')[0]}"

    @classmethod
    def info(cls) -> dict[str, Any] | None:
        """Its version, what it sees of the CPU and its compiled-model cache (None: not installed)."""
        if cls.problem() is not None:
            return None
        return {"version": cls.version().split()[-1], "cpu_capabilities": list(cpu_capabilities()),
                "cache": str(cache_folder())}

    @classmethod
    def describe(cls, info: dict[str, Any] | None) -> str:
        if info is None:
            return "not installed (pip install kedge[cpu])"
        return (f"{info['version']}, CPU {', '.join(info['cpu_capabilities'])}; compiled-model cache "
                f"{info['cache']}")

    def open(self) -> Session:
        path = self.locate()
        relative = path.relative_to(self.bundle.path).as_posix()
        sha = self.bundle.files.get(relative)
        if sha is None:
            from kedge.runtime.bundle.manifest import sha256_file

            sha = sha256_file(path)
        cache = cache_folder() if self.options.get("cache", True) else None
        return OpenVINOSession(path, str(sha), self.precision, self.threads, cache, self.form.name)
