"""TensorRT engines from the bundle's ONNX forms, built on the device that runs them.

Needs TensorRT only (no TensorFlow, no pycuda for the build itself; pycuda names the
GPU). The path depends on the installed TensorRT:

* TensorRT 11 builds strongly typed networks only (it removed the FP16/INT8 flags and
  the calibrators, and deprecated the STRONGLY_TYPED creation flag, since strong
  typing is always on): FP16 comes from the FP16 ONNX, INT8 from the Q/DQ ONNX.
* TensorRT 10 (JetPack 6) takes the FP32 ONNX with the FP16 flag, the Q/DQ ONNX with
  the INT8 flag (explicit quantization, the default), or, with
  `int8_source="calibration-cache"`, the FP32 ONNX plus kedge's calibration cache
  (implicit quantization; deprecated by NVIDIA but still what some Jetson stacks use).

Every build gets an optimisation profile for batch 1..max, an optional workspace limit
(Jetson memory is shared with the CPU), and a timing cache kept beside the engines so
a rebuild is fast. The timing cache is keyed by TensorRT version, GPU name and SM
(an AGX Orin and an Orin Nano share SM 8.7 but not their timings); one TensorRT
rejects starts afresh. "fp32" engines on TensorRT 10 clear the TF32 flag (on by
default), so FP32 means FP32. The engine and its sidecar are written atomically.
"""
from __future__ import annotations

import datetime
import hashlib
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedge.runtime.bundle.engines import ENGINE_DIR, EngineInfo, write_sidecar
from kedge.runtime.bundle.forms import FORMS, engine_precisions, engine_source
from kedge.runtime.bundle.manifest import atomic_path, sha256_file
from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.preprocess import INPUT_SHAPE

if TYPE_CHECKING:
    import tensorrt as trt

INT8_SOURCES = ("qdq", "calibration-cache")


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None when there is no real TensorRT."""
    from kedge.runtime.bundle.engines import tensorrt_module

    try:
        return str(tensorrt_module().__version__)
    except KedgeError:
        return None


def build_plan(precision: str, trt_major: int, int8_source: str = "qdq") -> tuple[str, str]:
    """(bundle artifact key of the ONNX to parse, build path) for a precision and TensorRT major:
    the first source the engine's row of the table of forms names that this TensorRT takes."""
    if int8_source not in INT8_SOURCES:
        raise KedgeError(f"INT8 source {int8_source!r}: choose from {', '.join(INT8_SOURCES)}")
    if precision not in engine_precisions():
        raise KedgeError(f"precision {precision!r}: choose from {', '.join(engine_precisions())}")
    if precision == "int8" and int8_source == "calibration-cache":
        if trt_major >= 11:
            raise KedgeError("TensorRT 11 removed calibrators: build INT8 from the Q/DQ ONNX "
                             "(the default), not from the calibration cache")
        return str(FORMS["onnx-fp32"].artifact), "calibration-cache"
    source = engine_source(precision, "11" if trt_major >= 11 else "10.3")
    return str(source.artifact), "strongly-typed" if trt_major >= 11 else "flags"


def build_engine(
    onnx_path: Path,
    bundle_dir: Path,
    model: str,
    precision: str,
    build_path: str,
    max_batch: int = 16,
    opt_batch: int = 1,
    workspace_mib: int | None = None,
    calibration_cache: Path | None = None,
    progress: bool = True,
) -> tuple[Path, EngineInfo]:
    """Build, then write `<bundle>/engines/<name>.engine` and its sidecar; returns both."""
    import tensorrt as trt

    from kedge.runtime.cuda import device

    if not 1 <= opt_batch <= max_batch:
        raise KedgeError(f"batch profile: need 1 <= opt ({opt_batch}) <= max ({max_batch})")
    gpu = device()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, build_path))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise KedgeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")

    config = builder.create_builder_config()
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if build_path != "strongly-typed" and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers may fall back to FP16 rather than FP32
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: 10-bit mantissa inner products are not FP32
    if build_path == "calibration-cache":
        if calibration_cache is None:
            raise KedgeError("an implicit INT8 build needs the bundle's TensorRT calibration cache "
                             "(run `kedge export BUNDLE --int8 --calib DIR` first)")
        config.int8_calibrator = cache_calibrator(trt, calibration_cache.read_text(encoding="utf-8"))
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    shapes = [trt.Dims([b, *INPUT_SHAPE]) for b in (1, opt_batch, max_batch)]
    profile.set_shape(name, shapes[0], shapes[1], shapes[2])
    config.add_optimization_profile(profile)
    if build_path == "calibration-cache" and not config.set_calibration_profile(profile):
        raise KedgeError(f"{onnx_path}: TensorRT refused the calibration profile (batch 1..{max_batch})")

    timing_path = bundle_dir / ENGINE_DIR / timing_cache_name(trt.__version__, gpu.name, gpu.compute_capability)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    if not config.set_timing_cache(timing, ignore_mismatch=False):
        print(f"kedge: {timing_path}: TensorRT rejected this timing cache (another device or build); "
              "starting a new one", file=sys.stderr)
        if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
            raise KedgeError(f"{onnx_path}: TensorRT could not use even an empty timing cache")
    if progress:
        config.progress_monitor = _progress(trt)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise KedgeError(f"{onnx_path}: TensorRT could not build a {precision} engine: "
                         f"{logger.last_error or 'see the TensorRT log above'}")
    seconds = time.perf_counter() - started

    info = EngineInfo(
        model=model, precision=precision, tensorrt_version=trt.__version__, gpu_name=gpu.name,
        compute_capability=gpu.compute_capability, source_onnx=onnx_path.relative_to(bundle_dir).as_posix(),
        source_onnx_sha256=sha256_file(onnx_path), build_path=build_path,
        batch={"min": 1, "opt": opt_batch, "max": max_batch}, workspace_mib=workspace_mib,
        build_seconds=round(seconds, 1), built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
    )
    engine_path = bundle_dir / ENGINE_DIR / info.file_name
    engine_bytes = bytes(memoryview(serialized))
    info.engine_sha256 = hashlib.sha256(engine_bytes).hexdigest()
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(engine_bytes)
    with atomic_path(timing_path) as tmp:
        tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    write_sidecar(engine_path, info)
    return engine_path, info


def network_flags(trt_module: Any, build_path: str) -> int:
    """create_network flags: TensorRT 11 is always strongly typed and deprecated the flag,
    so it gets none; TensorRT 10 gets STRONGLY_TYPED only for the strongly typed path."""
    if int(str(trt_module.__version__).split(".")[0]) >= 11 or build_path != "strongly-typed":
        return 0
    return 1 << int(trt_module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def timing_cache_name(tensorrt_version: str, gpu_name: str, compute_capability: str) -> str:
    """`timing.trt10.3.0.30.orin-nano.sm87.cache`: timings hold only for one TensorRT build and one GPU model."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return f"timing.trt{tensorrt_version}.{gpu}.sm{compute_capability.replace('.', '')}.cache"


def cache_calibrator(trt_module: Any, cache_text: str) -> trt.IInt8Calibrator:
    """An IInt8Calibrator that serves kedge's cache (re-headed for this TensorRT) and has no images.

    The calibrator class must match the algorithm named in the cache header, or
    TensorRT would ignore the cache and ask for images.
    """
    from kedge.calibration.trt_cache import with_version

    text = with_version(cache_text, trt_module.__version__)
    base = trt_module.IInt8MinMaxCalibrator if "-MinMaxCalibration" in text.partition("\n")[0] \
        else trt_module.IInt8EntropyCalibrator2

    class _CacheCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._cache = text.encode()

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # no images: every scale comes from the cache

        def read_calibration_cache(self) -> bytes:
            return self._cache

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return _CacheCalibrator()


def _logger(trt_module: Any) -> Any:
    """TensorRT's warnings and errors go to stderr; the last error is kept for the one-line failure."""
    import sys

    severity = trt_module.ILogger.Severity

    class _Logger(trt_module.ILogger):
        def __init__(self) -> None:
            trt_module.ILogger.__init__(self)
            self.last_error = ""

        def log(self, level: Any, msg: str) -> None:
            if level in (severity.ERROR, severity.INTERNAL_ERROR):
                self.last_error = msg
            if level <= severity.WARNING:
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return _Logger()


def _progress(trt_module: Any) -> Any:
    """A tqdm bar per top-level build phase (TensorRT's IProgressMonitor)."""
    from tqdm import tqdm

    class _Progress(trt_module.IProgressMonitor):
        def __init__(self) -> None:
            trt_module.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=False)

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in self._bars:
                self._bars[phase_name].update(1)
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return _Progress()
