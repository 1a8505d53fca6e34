"""The golden set: synthetic radiographs any install can regenerate, with the outputs they must give.

A bundle's kedge.json stores, per golden image, the generator's seed, index and
trabecular density, a sha256 of the drawn pixels, and the probabilities each of its
ONNX files gave on them when the set was made (`kedge golden`, export side). Here,
on the machine that runs a form, the images are drawn again (numpy + OpenCV, no
kedge.train, no real image) and a (backend, form, precision) pair's outputs are held
to what was stored for the same file, within the tolerances below. This is how a
form that answers differently on this CPU (an INT8 kernel that saturates without
VNNI, another OpenCV build) is caught before `auto` uses it.

The images are chosen at `kedge golden` time from a larger pool so that they span
every class the reference answers and a range of top-1 margins: a set whose images
all give one output would catch nothing.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kedge.runtime.errors import KedgeError

GOLDEN_VERSION = 2  # 2: every image has its own seed [seed, index]; 1: one generator drawn in sequence
SIZE = 512  # drawn larger than the model input, so the runtime's resize runs as on real files
DECIMALS = 6
# Max |dp| allowed between a pair's output here and what was stored for the same ONNX
# file at export (ONNX Runtime there): kernels differ between CPUs and runtimes, not the
# file. bf16 (OpenVINO running the FP32 file in bfloat16) gets parity's bf16 tolerance,
# int8 parity's int8 tolerance (runtime.checks.parity.THRESHOLDS): another runtime's INT8 kernels
# round differently (OpenVINO against ONNX Runtime on the December 2026 GRU's Q/DQ file: 0.027),
# while a saturating kernel (8-bit weights on a CPU without VNNI) moves them by 0.11-0.19.
SAME_FILE_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 1e-2, "int8": 5e-2}
# An engine against ONNX Runtime on the file it was built from: TensorRT picks other
# kernels (and on TensorRT 10 FP16/INT8 layer precisions of its own).
ENGINE_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "int8": 5e-2}


@dataclass
class GoldenImages:
    pngs: list[bytes]
    densities: list[float]
    pixel_sha256: list[str]

    def tensors(self) -> np.ndarray:
        from kedge.runtime.inputs.preprocess import preprocess

        return np.stack([preprocess(png, f"golden-{i}") for i, png in enumerate(self.pngs)])


def _encode(pixels: np.ndarray) -> tuple[bytes, str]:
    import cv2

    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise KedgeError("could not encode a golden image as PNG")
    return encoded.tobytes(), hashlib.sha256(pixels.tobytes()).hexdigest()


def draw(densities: Sequence[float], seed: int, size: int = SIZE, indices: Sequence[int] | None = None) -> GoldenImages:
    """Golden radiographs: image k from the generator seeded [seed, indices[k]] (version 2),
    so any subset of a pool can be drawn again alone."""
    from kedge.runtime.checks.synthetic import knee_radiograph

    indices = list(range(len(densities))) if indices is None else list(indices)
    encoded = [_encode(knee_radiograph(float(d), np.random.default_rng([seed, int(i)]), size))
               for d, i in zip(densities, indices, strict=True)]
    return GoldenImages([e[0] for e in encoded], [float(d) for d in densities], [e[1] for e in encoded])


def _draw_sequential(densities: Sequence[float], seed: int, size: int) -> GoldenImages:
    """Version 1 sets (shipped before December 2026): one generator drawn in sequence."""
    from kedge.runtime.checks.synthetic import knee_radiograph

    rng = np.random.default_rng(seed)
    encoded = [_encode(knee_radiograph(float(d), rng, size)) for d in densities]
    return GoldenImages([e[0] for e in encoded], [float(d) for d in densities], [e[1] for e in encoded])


def regenerate(golden: dict[str, Any]) -> GoldenImages:
    version = golden.get("version")
    if version == 1:
        return _draw_sequential(golden["densities"], int(golden["seed"]), int(golden["size"]))
    if version == GOLDEN_VERSION:
        return draw(golden["densities"], int(golden["seed"]), int(golden["size"]), golden["indices"])
    raise KedgeError(f"golden set version {version!r}: this kedge reads versions 1 and {GOLDEN_VERSION}")


def pool_densities(count: int) -> list[float]:
    """An even sweep of trabecular density, sparse to dense, for the candidate pool."""
    return [float(d) for d in np.linspace(0.08, 1.0, count)]


def select_spread(probabilities: np.ndarray, count: int) -> list[int]:
    """`count` pool indices that span the reference's answers and margins: the classes
    take turns, and within a class the images are taken at evenly spaced margins
    (p1 - p2), from near ties to confident answers."""
    answers = probabilities.argmax(1)
    top = np.sort(probabilities, axis=1)
    margins = top[:, -1] - top[:, -2]
    queues = []
    for c in np.unique(answers):
        members = np.flatnonzero(answers == c)
        members = members[np.argsort(margins[members], kind="stable")]
        queues.append(list(members))
    per_class = [0] * len(queues)
    remaining = min(count, len(probabilities))
    while remaining:  # classes take turns while they have images
        for j, q in enumerate(queues):
            if remaining and per_class[j] < len(q):
                per_class[j] += 1
                remaining -= 1
    chosen: list[int] = []
    for q, n in zip(queues, per_class, strict=True):
        if n:
            picks = np.unique(np.round(np.linspace(0, len(q) - 1, n)).astype(int))
            chosen += [int(q[i]) for i in picks]
    return sorted(chosen)


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

    def detail(self, reference: str) -> str:
        return (f"max |dp| {self.max_abs_diff:.2g} vs stored {self.compared_with} (tolerance {self.tolerance:g}) "
                f"on {self.images} images; top-1 agreement with {reference} {self.agreement_with_reference:.1%}"
                + (f"; {self.note}" if self.note else ""))


def stored_for(golden: dict[str, Any], form: str, sha256: str | None) -> str | None:
    """Why the stored outputs of `form` cannot judge the file with this sha256 (None: they can)."""
    if form not in golden.get("outputs", {}):
        return f"the golden set stores nothing for {form} (it predates it; rerun `kedge golden`)"
    recorded = (golden.get("files") or {}).get(form)
    if recorded is not None and sha256 is not None and recorded != sha256:
        return f"the golden outputs of {form} were stored for another file (sha256 {recorded[:12]}, now {sha256[:12]})"
    return None


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
    passed = bool(len(got)) and bool(np.isfinite(got).all()) and diff <= tolerance + 0.5 * 10 ** -DECIMALS
    return GoldenResult(target if source_form is None else form, target, tolerance, diff, agreement,
                        int(same_pixels.sum()), passed, note)


class GoldenBatch:
    """The regenerated images of a bundle's golden set, drawn once per process and bundle."""

    def __init__(self, golden: dict[str, Any]) -> None:
        self.golden = golden
        images = regenerate(golden)
        self.same_pixels = np.array([a == b for a, b in zip(images.pixel_sha256, golden["pixel_sha256"],
                                                            strict=True)])
        self.tensors = images.tensors()
