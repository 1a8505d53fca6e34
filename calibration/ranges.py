"""Tensor ranges from calibration images, computed once and cached under a key.

ONNX Runtime's calibrators (minmax, entropy, percentile) measure the range of every
tensor that feeds or leaves a quantizable op. The ranges are cached as JSON (ONNX
Runtime's own format) under a name that contains their key: the sha256 of the FP32
ONNX, of the calibration image set, and of the method and its settings. A changed
model or image set gets a new key and is recalibrated; an unchanged one is reused,
and a stale cache is never taken for a current one. Both Q/DQ files and the
TensorRT 10 calibration cache are made from the same ranges.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kedge.calibration.images import CalibrationSet
from kedge.runtime.bundle.manifest import atomic_path, sha256_file
from kedge.runtime.errors import KedgeError

METHODS = ("minmax", "entropy", "percentile")
PERCENTILE = 99.999
BATCH_SIZE = 8
BATCHES_PER_PASS = 4  # bounded memory: the calibrators hold every intermediate output of a pass


@dataclass(frozen=True)
class CalibrationKey:
    model_sha256: str
    images_sha256: str
    method: str
    settings: tuple[tuple[str, Any], ...]

    @property
    def digest(self) -> str:
        text = json.dumps([self.model_sha256, self.images_sha256, self.method, list(self.settings)])
        return hashlib.sha256(text.encode()).hexdigest()

    def cache_name(self) -> str:
        return f"ranges.{self.method}.{self.digest[:16]}.json"


def method_settings(method: str) -> tuple[tuple[str, Any], ...]:
    """What, besides the method's name, changes the ranges it computes."""
    if method not in METHODS:
        raise KedgeError(f"calibration method {method!r}: choose from {', '.join(METHODS)}")
    import onnxruntime

    common: tuple[tuple[str, Any], ...] = (("onnxruntime", onnxruntime.__version__),)
    if method == "percentile":
        return (*common, ("percentile", PERCENTILE), ("num_bins", 2048), ("symmetric", False))
    if method == "entropy":
        return (*common, ("num_bins", 2048), ("num_quantized_bins", 128), ("symmetric", False))  # as TensorRT's
    return (*common, ("symmetric", False))


def calibration_key(onnx_path: str | os.PathLike[str], images: CalibrationSet, method: str) -> CalibrationKey:
    return CalibrationKey(sha256_file(onnx_path), images.fingerprint(), method, method_settings(method))


def calibrate(
    onnx_path: str | os.PathLike[str],
    images: CalibrationSet,
    method: str,
    cache_dir: str | os.PathLike[str],
    progress: bool = True,
) -> tuple[Path, CalibrationKey, bool]:
    """Tensor ranges for `onnx_path` on `images`: from the cache when its key matches,
    else computed and cached. Returns (cache file, key, reused)."""
    key = calibration_key(onnx_path, images, method)
    cache = Path(cache_dir) / key.cache_name()
    if cache.is_file():
        return cache, key, True
    options = {k: v for k, v in key.settings if k != "onnxruntime"}
    ranges = collect_ranges(onnx_path, images.batches(BATCH_SIZE, progress), method, options)
    from onnxruntime.quantization.calibrate import save_tensors_data

    with atomic_path(cache) as tmp:
        save_tensors_data(ranges, tmp)
    return cache, key, False


def ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise KedgeError(f"calibration method {method!r}: choose from {', '.join(METHODS)}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def collect_ranges(
    onnx_path: str | os.PathLike[str],
    batches: Iterable[np.ndarray],
    method: str = "minmax",
    options: dict[str, Any] | None = None,
    op_types: list[str] | None = None,
) -> Any:
    """Run ONNX Runtime's calibrator for `method` over `batches`; returns its TensorsData.

    `op_types` None means the inputs and outputs of the quantizable ops; [] means every
    float tensor (the FP16 overflow check wants those). Batches are fed a few at a
    time so memory stays bounded however many images there are.
    """
    import tempfile

    from onnxruntime.quantization.calibrate import create_calibrator

    with tempfile.TemporaryDirectory(prefix="kedge-calib-") as scratch, _quiet_stdout():
        calibrator = create_calibrator(Path(onnx_path), _quantizable_op_types() if op_types is None else op_types,
                                       augmented_model_path=str(Path(scratch) / "augmented.onnx"),
                                       calibrate_method=ort_method(method), extra_options=options or {})
        pending: list[dict[str, Any]] = []
        for batch in batches:
            if pending and batch.shape != pending[0]["image"].shape:  # histogram collectors stack same shapes
                calibrator.collect_data(_Reader(pending))
                pending = []
            pending.append({"image": batch})
            if len(pending) == BATCHES_PER_PASS:
                calibrator.collect_data(_Reader(pending))
                pending = []
        if pending:
            calibrator.collect_data(_Reader(pending))
        return calibrator.compute_data()


@contextlib.contextmanager
def _quiet_stdout() -> Any:
    """ONNX Runtime's histogram calibrators print progress to stdout, which is for --json."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


class _Reader:
    """The CalibrationDataReader protocol over a list of feeds (ONNX Runtime checks get_next)."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)


def _quantizable_op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
