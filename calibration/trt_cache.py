"""A TensorRT 10 calibration cache, written from the same ranges as the Q/DQ files.

TensorRT 10 (JetPack 6 on Jetson) can still build INT8 implicitly from an FP32 ONNX:
the IInt8Calibrator reads a cache instead of running images through the GPU. The cache
is text: a header `TRT-<version>-<algorithm>`, then one line per tensor,
`<ONNX tensor name>: <scale as big-endian float32 hex>`, where scale = amax / 127.
The tensor names are the FP32 ONNX's, which TensorRT's ONNX parser keeps.

The algorithm named in the header must match the calibrator that reads the cache
(kedge's engine builder uses the same table); the scales themselves are the ranges
kedge's chosen method measured, which the manifest records.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from kedge.runtime.bundle.manifest import atomic_write_text
from kedge.runtime.errors import KedgeError

# TensorRT calibrator algorithm for each kedge method (TensorRT has no percentile calibrator;
# a percentile cache is read through the entropy calibrator, which only checks the header).
ALGORITHMS = {"minmax": "MinMaxCalibration", "entropy": "EntropyCalibration2", "percentile": "EntropyCalibration2"}
DEFAULT_TRT_VERSION = "10.3.0"  # JetPack 6


def trt_version_code(version: str) -> int:
    """TensorRT's numeric version in cache headers: 10.3.0 -> 100300 (8.6.1 -> 8601)."""
    try:
        major, minor, patch = (int(p) for p in (version.split(".") + ["0", "0"])[:3])
    except ValueError:
        raise KedgeError(f"TensorRT version {version!r}: expected MAJOR.MINOR[.PATCH]") from None
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def cache_text(ranges: dict[str, tuple[float, float]], method: str, trt_version: str = DEFAULT_TRT_VERSION) -> str:
    """The cache file's text for tensor ranges {name: (lowest, highest)}."""
    if method not in ALGORITHMS:
        raise KedgeError(f"calibration method {method!r}: choose from {', '.join(ALGORITHMS)}")
    lines = [f"TRT-{trt_version_code(trt_version)}-{ALGORITHMS[method]}"]
    for name in sorted(ranges):
        lowest, highest = ranges[name]
        amax = max(abs(lowest), abs(highest))
        scale = amax / 127.0 if amax > 0 else 1.0 / 127.0  # TensorRT rejects a zero scale
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def read_cache(text: str) -> tuple[str, dict[str, float]]:
    """Parse a cache: (header, {tensor: scale}). Used by tests and to re-header a cache."""
    header, *body = text.strip().splitlines()
    scales = {}
    for line in body:
        name, _, value = line.rpartition(": ")
        scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
    return header, scales


def with_version(text: str, trt_version: str) -> str:
    """The same cache with its header naming `trt_version` (the scales do not depend on it)."""
    header, _, rest = text.partition("\n")
    parts = header.split("-", 2)
    if len(parts) != 3 or parts[0] != "TRT":
        raise KedgeError(f"not a TensorRT calibration cache (header {header!r})")
    return f"TRT-{trt_version_code(trt_version)}-{parts[2]}\n{rest}"


def ranges_from_tensors_data(tensors_data: object) -> dict[str, tuple[float, float]]:
    """{name: (lowest, highest)} from ONNX Runtime's TensorsData."""
    out = {}
    for name, data in tensors_data.data.items():  # type: ignore[attr-defined]
        lowest, highest = data.range_value
        out[name] = (float(np.min(lowest)), float(np.max(highest)))
    return out


def write_trt_cache(
    ranges_path: str | os.PathLike[str], method: str, out: str | os.PathLike[str],
    trt_version: str = DEFAULT_TRT_VERSION,
) -> Path:
    """Write the TensorRT cache for the cached ranges at `ranges_path`, atomically."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    atomic_write_text(out, cache_text(ranges_from_tensors_data(load_tensors_data(ranges_path)), method, trt_version))
    return Path(out)
