"""What this machine offers kedge: versions, ONNX Runtime providers, TensorRT, the GPU,
the CPU features that decide INT8 speed on the CPU, and a bundle's engines.

Every probe is optional and never raises: `kedge info` is what a user runs when
something is missing, so it must work when everything is missing.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# x86 flags that matter for ONNX Runtime's INT8 kernels: AVX2 (baseline), AVX512-VNNI and
# AVX-VNNI (int8 dot products); ARM's asimddp (dot product) and i8mm on Jetson-class CPUs.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def cpu_info() -> dict[str, Any]:
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key in ("model name", "hardware") and value.strip():
            model = value.strip()
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "int8_features": {flag: flag in flags for flag in CPU_FLAGS}}


def onnxruntime_info() -> dict[str, Any] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from kedge.runtime.backends.onnxruntime import choose_providers

    return {"version": ort.__version__, "providers": list(ort.get_available_providers()),
            "would_use": choose_providers("auto")}


def tensorrt_info() -> dict[str, Any] | None:
    from kedge.runtime.backends.tensorrt import tensorrt_module
    from kedge.runtime.errors import KedgeError

    try:
        return {"version": tensorrt_module().__version__}
    except (KedgeError, OSError) as err:  # OSError: tensorrt installed but its libraries do not load
        return {"version": None, "problem": str(err)}


def gpu_info() -> dict[str, Any] | None:
    from dataclasses import asdict

    from kedge.runtime.cuda import device_summary, gpu_count

    summary = device_summary()
    return None if summary is None else {**asdict(summary), "count": gpu_count()}


def engines_info(bundle_path: str | Path) -> list[dict[str, Any]]:
    """Each engine in a bundle with whether this machine can run it, and why not."""
    from kedge.runtime.bundle import load_bundle
    from kedge.runtime.engines import check_compatible, read_sidecar
    from kedge.runtime.errors import KedgeError

    bundle = load_bundle(bundle_path)
    trt = tensorrt_info() or {}
    gpu = gpu_info()
    rows = []
    for name, rel in sorted(bundle.manifest.get("engines", {}).items()):
        path = bundle.path / rel
        row: dict[str, Any] = {"engine": name, "compatible": False}
        try:
            info = read_sidecar(path)
            row.update(precision=info.precision, tensorrt=info.tensorrt_version, gpu=info.gpu_name,
                       compute_capability=info.compute_capability)
            if not path.is_file():
                raise KedgeError(f"{path}: missing")
            if trt.get("version") is None or gpu is None:
                raise KedgeError("no TensorRT or no GPU on this machine")
            check_compatible(path, info, trt["version"], gpu["compute_capability"],
                             bundle.manifest.get("files", {}).get(info.source_onnx))
            row["compatible"] = True
        except KedgeError as err:
            row["problem"] = str(err)
        rows.append(row)
    return rows


def collect(bundle: str | Path | None = None) -> dict[str, Any]:
    import cv2
    import numpy as np

    import kedge
    from kedge.runtime.preprocess import PREPROCESS_VERSION

    info: dict[str, Any] = {
        "kedge": kedge.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "numpy": np.__version__, "opencv": cv2.__version__, "preprocess_version": PREPROCESS_VERSION,
        "onnxruntime": onnxruntime_info(), "tensorrt": tensorrt_info(), "pycuda": _version("pycuda"),
        "tensorflow": _version("tensorflow"), "gpu": gpu_info(), "cpu": cpu_info(),
    }
    if bundle is not None:
        info["bundle"] = str(bundle)
        info["engines"] = engines_info(bundle)
    return info
