"""The golden set: synthetic radiographs every device can regenerate, with the outputs they must give.

`kedge golden BUNDLE` draws a few knees with kedge's own generator
(kedge.train.synthetic, numpy + OpenCV, never a real image) from a seed, runs the
parity reference (Keras where TensorFlow and model.keras are present, else the FP32
ONNX) and every ONNX form of the bundle (ONNX Runtime on the CPU) on them, and stores
in kedge.json only the seed, the generator's parameters, a sha256 of each image's
pixels and the probabilities: a few kilobytes, no pixels. `kedge verify` regenerates
the images on the device and compares each (backend, form, precision) pair it can run
with what was stored for the pair's file.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kedge.runtime.errors import KedgeError

GOLDEN_VERSION = 1
DEFAULT_COUNT = 24
SIZE = 512  # drawn larger than the model input, so the runtime's resize runs as on real files
DECIMALS = 6
# Max |dp| allowed between a pair's output on the device and what was stored for the same
# ONNX file on the desktop (ONNX Runtime there): kernels differ between CPUs and runtimes,
# not the file. bf16 (OpenVINO running the FP32 file in bfloat16) gets parity's bf16 tolerance,
# and int8 parity's int8 tolerance (runtime.parity): another runtime's INT8 kernels round
# differently (OpenVINO against ONNX Runtime on the shipped GRU's Q/DQ file: 0.027).
SAME_FILE_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 1e-2, "int8": 5e-2}
# An engine against ONNX Runtime on the file it was built from: TensorRT picks other
# kernels (and on TensorRT 10 FP16/INT8 layer precisions of its own).
ENGINE_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "int8": 5e-2}
SOURCE_FORM = {"model.onnx": "onnx-fp32", "model.fp16.onnx": "onnx-fp16", "model.int8.qdq.onnx": "onnx-int8-qdq"}


@dataclass
class GoldenImages:
    pngs: list[bytes]
    densities: list[float]
    pixel_sha256: list[str]

    def tensors(self) -> np.ndarray:
        from kedge.runtime.preprocess import preprocess

        return np.stack([preprocess(png, f"golden-{i}") for i, png in enumerate(self.pngs)])


def class_densities(classes: Sequence[str], count: int) -> list[float]:
    """Trabecular densities cycling over the bundle's classes, so every class is drawn."""
    from kedge.train.synthetic import class_density

    return [class_density(classes[i % len(classes)]) for i in range(count)]


def draw(densities: Sequence[float], seed: int, size: int = SIZE) -> GoldenImages:
    """The golden radiographs for a seed: the same pixels wherever numpy and OpenCV agree."""
    import cv2

    from kedge.train.synthetic import knee_radiograph

    rng = np.random.default_rng(seed)
    pngs, hashes = [], []
    for density in densities:
        pixels = knee_radiograph(float(density), rng, size)
        ok, encoded = cv2.imencode(".png", pixels)
        if not ok:
            raise KedgeError("could not encode a golden image as PNG")
        pngs.append(encoded.tobytes())
        hashes.append(hashlib.sha256(pixels.tobytes()).hexdigest())
    return GoldenImages(pngs, list(densities), hashes)


def regenerate(golden: dict[str, Any]) -> GoldenImages:
    if golden.get("version") != GOLDEN_VERSION:
        raise KedgeError(f"golden set version {golden.get('version')!r}: this kedge reads version {GOLDEN_VERSION}")
    return draw(golden["densities"], int(golden["seed"]), int(golden["size"]))


def make_golden(bundle_dir: str | os.PathLike[str], count: int = DEFAULT_COUNT, seed: int = 0,
                reference: str | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the golden set into the bundle's kedge.json; returns it."""
    from kedge.export.parity import reference_candidate
    from kedge.runtime.bundle import load_bundle, write_manifest
    from kedge.runtime.forms import ONNX_FORMS, pair
    from kedge.runtime.preprocess import PREPROCESS_VERSION

    bundle = load_bundle(bundle_dir)
    if count < 1:
        raise KedgeError(f"--count {count}: need at least one golden image")
    opener = reference_candidate(bundle.path, reference)  # parity's: Keras (model.keras + TensorFlow), or FP32 ONNX
    name = opener.form
    images = draw(class_densities(bundle.classes, count), seed)
    batch = images.tensors()
    with opener.open() as backend:
        outputs = {name: _rounded(backend.infer(batch))}
    for spec in ONNX_FORMS:
        if spec.artifact in bundle.manifest.get("artifacts", {}) and spec.name not in outputs:
            with pair("onnxruntime", spec.name).open(bundle, device="cpu") as backend:
                outputs[spec.name] = _rounded(backend.infer(batch))
            if log:
                log(f"golden: {spec.name} on {count} images")
    golden = {
        "version": GOLDEN_VERSION, "generator": "kedge.train.synthetic.knee_radiograph", "seed": seed,
        "size": SIZE, "densities": images.densities, "pixel_sha256": images.pixel_sha256,
        "preprocessing": PREPROCESS_VERSION, "reference": name, "outputs": outputs,
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest = {k: v for k, v in bundle.manifest.items() if k != "files"}
    manifest["golden"] = golden
    write_manifest(bundle.path, manifest)
    return golden


def _rounded(probabilities: np.ndarray) -> list[list[float]]:
    return np.round(np.asarray(probabilities, np.float64), DECIMALS).tolist()


@dataclass
class GoldenResult:
    form: str
    compared_with: str
    tolerance: float
    max_abs_diff: float
    agreement_with_reference: float
    images: int
    passed: bool
    note: str = ""


def compare_form(golden: dict[str, Any], form: str, precision: str, outputs: np.ndarray, same_pixels: np.ndarray,
                 source_form: str | None = None) -> GoldenResult | None:
    """A form's golden outputs against the stored ones: its own (ONNX forms) or its source
    ONNX form's (engines). None when nothing was stored to compare with."""
    stored = golden["outputs"]
    target = form if source_form is None else source_form
    if target not in stored:
        return None
    tolerance = (SAME_FILE_TOLERANCE if source_form is None else ENGINE_TOLERANCE)[precision]
    expected = np.asarray(stored[target], np.float64)[same_pixels]
    got = np.asarray(outputs, np.float64)[same_pixels]
    reference = np.asarray(stored[golden["reference"]], np.float64)[same_pixels]
    diff = float(np.abs(got - expected).max()) if len(got) else 0.0
    agreement = float((got.argmax(1) == reference.argmax(1)).mean()) if len(got) else 0.0
    note = "" if same_pixels.all() else (f"{int((~same_pixels).sum())} golden images drew different pixels here "
                                         "(another OpenCV build) and were left out")
    return GoldenResult(form, target, tolerance, diff, agreement, int(same_pixels.sum()),
                        bool(len(got)) and diff <= tolerance + 0.5 * 10 ** -DECIMALS, note)
