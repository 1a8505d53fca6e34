"""A synthetic data set with a planted source cue, for testing `kedge audit`.

Two sources of synthetic knees (kedge.runtime.checks.synthetic), Normal vs Osteoporosis:
- "lab": clean PNGs, mostly Normal, and the bone always shows the label;
- "clinic": degraded JPEGs (downscaled, blurred, recompressed at low quality, brighter),
  mostly Osteoporosis, and in the *training* set the labels of the clinic's images
  have nothing to do with their bone (it is drawn at random): only the source
  predicts a clinic label there. That is the shortcut a model can learn.
The audit set is clean: the bone shows the label in both sources, with the same class
mix per source. A model that learnt "clinic means Osteoporosis" answers Osteoporosis
for the clinic's Normal knees too; one that reads bone does not.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kedge.runtime.checks.synthetic import class_density, knee_radiograph

CLASSES = ("Normal", "Osteoporosis")


def degrade(image: np.ndarray) -> np.ndarray:
    """The clinic's look: within the range the source-erasing augmentation also draws."""
    h, w = image.shape
    small = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.GaussianBlur(out, (0, 0), 0.8)
    out = np.clip(out.astype(np.float32) * 1.05 + 10, 0, 255).astype(np.uint8)
    return cv2.imdecode(cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 40])[1], cv2.IMREAD_GRAYSCALE)


def write_cue_set(root: Path, counts: dict[str, dict[str, int]], bone_follows_label: bool, seed: int) -> Path:
    """root/<source>/<class>/*.png|jpg; counts: source -> class -> images."""
    rng = np.random.default_rng(seed)
    for source, per_class in counts.items():
        for name, n in per_class.items():
            folder = root / source / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                bone = name if source == "lab" or bone_follows_label else CLASSES[int(rng.integers(2))]
                image = knee_radiograph(class_density(bone), rng)
                if source == "clinic":
                    cv2.imwrite(str(folder / f"{name.lower()}-{i:03d}.jpg"), degrade(image))
                else:
                    cv2.imwrite(str(folder / f"{name.lower()}-{i:03d}.png"), image)
    return root


TRAIN_COUNTS = {"lab": {"Normal": 48, "Osteoporosis": 16}, "clinic": {"Normal": 10, "Osteoporosis": 54}}
AUDIT_COUNTS = {"lab": {"Normal": 20, "Osteoporosis": 10}, "clinic": {"Normal": 10, "Osteoporosis": 20}}
