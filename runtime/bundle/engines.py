"""TensorRT engine files: their readable names and their sidecar JSON.

An engine only runs on the TensorRT version and GPU architecture it was built with,
so both are in its name, `knee-cnn.int8.trt10.3.sm87.engine`, and in the sidecar
beside it (`.engine.json`): TensorRT version, GPU name, compute capability,
precision, the sha256 of the ONNX it came from, the batch profile and the build
time. The runtime reads the sidecar before it deserializes anything, and refuses an
engine that does not match this machine with a one-line error that says how to
rebuild it (in the spirit of jetson-inference's engine cache key). Engine discovery
(which engine of a bundle runs on this machine, against the TensorRT module found
here) lives here too; the TensorRT backend (backends/tensorrt.py) runs what it finds.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kedge.runtime.bundle.forms import engine_precisions, onnx_forms
from kedge.runtime.bundle.manifest import Bundle, atomic_write_json
from kedge.runtime.errors import KedgeError

ENGINE_DIR = "engines"


@dataclass
class EngineInfo:
    """What an engine was built from and for; saved as the sidecar JSON."""

    model: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    source_onnx: str  # bundle-relative path
    source_onnx_sha256: str
    build_path: str  # "flags", "strongly-typed" or "calibration-cache"
    batch: dict[str, int]  # min / opt / max
    workspace_mib: int | None
    build_seconds: float
    built_at: str
    input_name: str = "image"
    output_name: str = "probabilities"
    extra: dict[str, Any] = field(default_factory=dict)
    engine_sha256: str | None = None  # of the engine file itself; None in sidecars written before it was kept

    @property
    def file_name(self) -> str:
        return engine_file_name(self.model, self.precision, self.tensorrt_version, self.compute_capability)


def engine_file_name(model: str, precision: str, tensorrt_version: str, compute_capability: str) -> str:
    """`knee-cnn.int8.trt10.3.sm87.engine`: model, precision, TensorRT major.minor, SM."""
    if precision not in engine_precisions():
        raise KedgeError(f"precision {precision!r}: choose from {', '.join(engine_precisions())}")
    major_minor = ".".join(tensorrt_version.split(".")[:2])
    return f"{model}.{precision}.trt{major_minor}.sm{compute_capability.replace('.', '')}.engine"


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(engine)}.json")


def write_sidecar(engine: str | os.PathLike[str], info: EngineInfo) -> Path:
    path = sidecar_path(engine)
    atomic_write_json(path, asdict(info))
    return path


def read_sidecar(engine: str | os.PathLike[str]) -> EngineInfo:
    path = sidecar_path(engine)
    if not path.is_file():
        raise KedgeError(f"{engine}: no sidecar {path.name}; rebuild it with "
                         f"`{rebuild_command(engine, _precision_in_name(engine))}`")
    try:
        return EngineInfo(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as err:
        raise KedgeError(f"{path}: not a kedge engine sidecar ({err})") from None


def check_compatible(engine: str | os.PathLike[str], info: EngineInfo, tensorrt_version: str,
                     compute_capability: str, onnx_sha256: str | None = None) -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture, or from
    an ONNX file other than the one the bundle now holds (`onnx_sha256`)."""
    problems = []
    if info.tensorrt_version != tensorrt_version:  # engines are tied to the exact build, patch included
        problems.append(f"built with TensorRT {info.tensorrt_version}, this machine has {tensorrt_version} "
                        "(an engine runs only on the exact TensorRT version that built it)")
    if info.compute_capability != compute_capability:
        problems.append(f"built for compute capability {info.compute_capability} ({info.gpu_name}), "
                        f"this GPU is {compute_capability}")
    if onnx_sha256 is not None and info.source_onnx_sha256 != onnx_sha256:
        problems.append(f"built from a different {info.source_onnx} (sha256 {info.source_onnx_sha256[:12]}, "
                        f"the bundle's is {onnx_sha256[:12]})")
    if problems:
        raise KedgeError(f"{engine}: {'; '.join(problems)}; rebuild it here with "
                         f"`{rebuild_command(engine, info.precision)}`")


def check_engine_bytes(engine: str | os.PathLike[str], data: bytes, info: EngineInfo) -> None:
    """Refuse an engine file whose bytes are not the ones its sidecar recorded when it was
    built (a truncated copy, a flipped byte): deserializing those is undefined, so the
    error names the engine file, not the ONNX it came from, and how to rebuild it."""
    import hashlib

    if info.engine_sha256 is None:
        return
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.engine_sha256:
        raise KedgeError(f"{engine}: sha256 {digest[:12]} differs from the {info.engine_sha256[:12]} recorded when it "
                         f"was built (changed or corrupted); rebuild it with "
                         f"`{rebuild_command(engine, info.precision)}`")


def rebuild_command(engine: str | os.PathLike[str], precision: str) -> str:
    """The command that rebuilds an engine in place (the bundle is the engine folder's parent)."""
    bundle = Path(engine).resolve().parent.parent
    flag = "" if precision == "fp32" else f" --{precision}"
    return f"kedge export {bundle} --engine{flag}"


def _precision_in_name(engine: str | os.PathLike[str]) -> str:
    parts = Path(engine).name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in engine_precisions() else "fp32"


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


def tensorrt_usable() -> bool:
    """TensorRT and pycuda importable and a CUDA GPU visible (all needed to run an engine)."""
    from importlib.util import find_spec

    from kedge.runtime.cuda import has_gpu

    try:
        tensorrt_module()
    except KedgeError:
        return False
    return find_spec("pycuda") is not None and has_gpu()


def bundle_engines(bundle: Bundle, precision: str) -> list[Path]:
    """The bundle's engine files of one precision, whatever they were built for."""
    paths = [bundle.path / rel for rel in bundle.engines.values()]
    found = []
    for path in paths:
        try:
            if path.is_file() and read_sidecar(path).precision == precision:
                found.append(path)
        except KedgeError:
            continue
    return found


def engine_path(bundle: Bundle, precision: str) -> Path | None:
    """This machine's engine of `precision`, checked against its sidecar (TensorRT version,
    GPU, source ONNX sha256). None when the bundle has no engine of that precision; a
    one-line KedgeError saying what differs when it has one but not for this machine."""
    from kedge.runtime.cuda import device

    candidates = bundle_engines(bundle, precision)
    if not candidates:
        return None
    trt = tensorrt_module()
    capability = device().compute_capability
    wanted = engine_file_name(bundle.name, precision, trt.__version__, capability)
    path = next((p for p in candidates if p.name == wanted), candidates[0])
    info = read_sidecar(path)
    check_compatible(path, info, trt.__version__, capability, source_sha256(bundle, info.source_onnx))
    return path


def source_sha256(bundle: Bundle, relative: str) -> str | None:
    """The sha256 kedge.json records for an engine's source ONNX."""
    return bundle.files.get(relative)


def source_form_of(bundle: Bundle, pair: Any) -> str | None:
    """The ONNX form an engine pair was built from (its sidecar names the file); None for an
    ONNX form, which is its own source."""
    if pair.form.artifact is not None:
        return None
    path = engine_path(bundle, pair.form.precision)
    if path is None:
        return None
    by_file = {f.file: f.name for f in onnx_forms()}
    return by_file.get(Path(read_sidecar(path).source_onnx).name)
