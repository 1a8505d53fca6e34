"""`kedge golden BUNDLE`: make the golden set that every machine checks its forms against.

A pool of synthetic knees (kedge.runtime.checks.synthetic, numpy + OpenCV, never a real
image) goes through the parity reference (Keras where TensorFlow and model.keras are
present, else the FP32 ONNX); the images kept span every class it answers and a range
of margins (runtime.checks.golden.select_spread). Every ONNX form of the bundle then runs on
them with ONNX Runtime, and kedge.json stores the seed, indices and densities, each
image's pixel sha256, the probabilities, and the sha256 of the file each set of
probabilities came from: a few kilobytes, no pixels. The runtime regenerates the
images and holds each (backend, form, precision) pair to these outputs
(runtime/checks/golden.py, runtime/checks/choice.py, `kedge verify`).
"""
from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import numpy as np

from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.checks.golden import (
    DECIMALS,
    GOLDEN_VERSION,
    SIZE,
    GoldenImages,
    draw,
    pool_densities,
    select_spread,
)
from kedge.runtime.errors import KedgeError

DEFAULT_COUNT = 24
POOL_FACTOR = 4  # candidates drawn per kept image


def make_golden(bundle: Bundle, count: int = DEFAULT_COUNT, seed: int = 0,
                reference: str | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the golden set into the bundle's kedge.json; returns it."""
    from kedge.runtime.backends import pair
    from kedge.runtime.bundle.forms import onnx_forms
    from kedge.runtime.checks.parity import reference_pair
    from kedge.runtime.inputs.preprocess import PREPROCESS_VERSION

    if count < 1:
        raise KedgeError(f"--count {count}: need at least one golden image")
    chosen = reference_pair(bundle, reference)  # parity's: Keras (model.keras + TensorFlow), or FP32 ONNX
    name = chosen.form.name
    densities = pool_densities(POOL_FACTOR * count)
    pool = draw(densities, seed)  # image k comes from seed [seed, k]: a kept subset regenerates alone
    pool_tensors = pool.tensors()
    with chosen.open(bundle) as backend:
        pool_outputs = np.concatenate([np.asarray(backend.infer(pool_tensors[i:i + 16]))  # ResNet50 memory
                                       for i in range(0, len(pool_tensors), 16)])
    keep = select_spread(pool_outputs.astype(np.float64), count)
    images = GoldenImages([pool.pngs[i] for i in keep], [densities[i] for i in keep],
                          [pool.pixel_sha256[i] for i in keep])
    batch = pool_tensors[keep]
    outputs = {name: _rounded(pool_outputs[keep])}
    files: dict[str, str] = {}
    for spec in onnx_forms():
        digest = bundle.sha256(str(spec.artifact))
        if digest is None:
            continue
        files[spec.name] = digest
        if spec.name not in outputs:
            with pair("onnxruntime", spec.name).open(bundle, device="cpu") as session:
                outputs[spec.name] = _rounded(session.infer(batch))
            if log:
                log(f"golden: {spec.name} on {len(keep)} images")
    answers = np.asarray(outputs[name]).argmax(1)
    golden = {
        "version": GOLDEN_VERSION, "generator": "kedge.runtime.checks.synthetic.knee_radiograph", "seed": seed,
        "size": SIZE, "indices": keep, "densities": images.densities, "pixel_sha256": images.pixel_sha256,
        "preprocessing": PREPROCESS_VERSION, "reference": name, "outputs": outputs, "files": files,
        "answers": {c: int((answers == k).sum()) for k, c in enumerate(bundle.classes)},
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    bundle.update(golden=golden)
    return golden


def _rounded(probabilities: np.ndarray) -> list[list[float]]:
    return np.round(np.asarray(probabilities, np.float64), DECIMALS).tolist()
