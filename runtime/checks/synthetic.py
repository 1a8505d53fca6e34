"""Synthetic knee radiographs, so tests can train, evaluate and export end to end
without real data (and without ever committing a real image).

Each image shows a femur and a tibia separated by a joint space, inside soft tissue,
with a trabecular texture whose density and brightness follow the class: dense and
bright for Normal, sparse and dim for Osteoporosis, in between for Osteopenia. The
cue is strong enough that a reduced-width model learns it in seconds, and every image
varies in position, joint width, rotation, exposure and noise. numpy + OpenCV only.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from kedge.runtime.bundle.manifest import staged_folder

CLASS_DENSITY = {"normal": 0.95, "osteopenia": 0.6, "osteoporosis": 0.25}


def class_density(name: str) -> float:
    """Trabecular density for a class name; unknown names are spread by their position."""
    return CLASS_DENSITY.get(name.lower(), 0.5)


def knee_radiograph(density: float, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """One synthetic AP knee radiograph, uint8, size x size; density in (0, 1]."""
    s = float(size)
    density = float(np.clip(density + rng.uniform(-0.06, 0.06), 0.05, 1.0))
    cx = s / 2 + rng.uniform(-0.04, 0.04) * s
    joint = s * (0.5 + rng.uniform(-0.05, 0.05))
    gap = s * rng.uniform(0.025, 0.05)
    shaft = s * rng.uniform(0.15, 0.2)

    tissue = np.zeros((size, size), np.uint8)
    cv2.ellipse(tissue, _pt(cx, s / 2), _pt(0.36 * s, 0.75 * s), 0, 0, 360, 255, -1)

    bone = np.zeros((size, size), np.uint8)
    femur_end = joint - gap / 2
    cv2.rectangle(bone, _pt(cx - shaft / 2, 0), _pt(cx + shaft / 2, femur_end - 0.1 * s), 255, -1)
    flare = [(cx - shaft / 2, femur_end - 0.24 * s), (cx + shaft / 2, femur_end - 0.24 * s),
             (cx + 0.21 * s, femur_end - 0.06 * s), (cx - 0.21 * s, femur_end - 0.06 * s)]
    cv2.fillConvexPoly(bone, np.array(flare, np.int32), 255)
    for side in (-1, 1):  # the two condyles
        cv2.ellipse(bone, _pt(cx + side * 0.1 * s, femur_end - 0.065 * s), _pt(0.115 * s, 0.065 * s),
                    0, 0, 360, 255, -1)
    tibia_top = joint + gap / 2
    tibia = [(cx - 0.22 * s, tibia_top), (cx + 0.22 * s, tibia_top), (cx + 0.2 * s, tibia_top + 0.09 * s),
             (cx + shaft / 2, tibia_top + 0.22 * s), (cx + shaft / 2, s), (cx - shaft / 2, s),
             (cx - shaft / 2, tibia_top + 0.22 * s), (cx - 0.2 * s, tibia_top + 0.09 * s)]
    cv2.fillPoly(bone, [np.array(tibia, np.int32)], 255)

    noise: np.ndarray = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), s / 224 * 1.3)
    noise /= noise.std() + 1e-6
    trabeculae = (noise > np.quantile(noise, 1 - 0.55 * density)).astype(np.float32)
    cortex = cv2.morphologyEx(bone, cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)) > 0

    image: np.ndarray = np.full((size, size), 22.0, np.float32)  # cv2 results below are typed loosely
    image[tissue > 0] = 70.0
    inside = bone > 0
    image[inside] = 85 + 70 * density + 60 * trabeculae[inside]
    image[cortex] = 150 + 80 * density

    angle = rng.uniform(-6, 6)
    rotation = cv2.getRotationMatrix2D((s / 2, s / 2), angle, 1.0)
    image = cv2.warpAffine(image, rotation, (size, size), borderMode=cv2.BORDER_REPLICATE)
    image = cv2.GaussianBlur(image, (0, 0), 0.6)
    image = image * rng.uniform(0.85, 1.1) + rng.uniform(-12, 12)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def write_dataset(
    out: str | os.PathLike[str],
    classes: Sequence[str] = ("Normal", "Osteopenia", "Osteoporosis"),
    per_class: int = 40,
    seed: int = 0,
    size: int = 224,
    overwrite: bool = False,
) -> list[Path]:
    """Write out/<Class>/<class>-<i>.png for each class; returns the paths (final names)."""
    rng = np.random.default_rng(seed)
    final = Path(out)
    written: list[Path] = []
    with staged_folder(final, overwrite=overwrite) as stage:
        for name in classes:
            (stage / name).mkdir()
            for i in range(per_class):
                image = knee_radiograph(class_density(name), rng, size)
                relative = Path(name) / f"{name.lower()}-{i:04d}.png"
                if not cv2.imwrite(str(stage / relative), image):
                    raise OSError(f"cannot write {stage / relative}")
                written.append(final / relative)
    return written
