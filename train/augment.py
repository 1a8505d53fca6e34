"""Training augmentation in numpy + OpenCV, seeded per (seed, epoch, image).

Two kinds:
- geometry, as the papers do: horizontal flip (left/right knee), shifts up to 10 %,
  rotations up to 10 degrees (no vertical flip: no radiograph is upside down);
- source erasure: what tells one collection's files from another's (compression,
  resolution, sharpness, noise, exposure) is randomised, so the only stable cue left
  is the bone. JPEG re-encoding at a random quality, downscale-then-upscale, blur or
  sharpening, noise, and contrast, gamma and brightness changes.

Every draw comes from a generator seeded by (seed, epoch, index), so a run is
reproducible whatever the batch order or thread timing.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SIDE = 224


@dataclass(frozen=True)
class AugmentSettings:
    geometry: bool = True
    source_erasing: bool = True


def image_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def augment(image: np.ndarray, rng: np.random.Generator, settings: AugmentSettings) -> np.ndarray:
    """One grey image (H, W) float32 in [0, 1] -> an augmented copy, same shape and range."""
    out = image
    if settings.geometry:
        out = _geometry(out, rng)
    if settings.source_erasing:
        out = _erase_source(out, rng)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _geometry(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    if rng.random() < 0.5:
        image = image[:, ::-1]
    angle = rng.uniform(-10, 10)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    matrix[:, 2] += (rng.uniform(-0.1, 0.1) * w, rng.uniform(-0.1, 0.1) * h)
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def _erase_source(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    if rng.random() < 0.5:  # resolution: the full-resolution originals and the 224 px copies differ here
        factor = rng.uniform(0.35, 0.9)
        small = cv2.resize(image, (max(8, round(w * factor)), max(8, round(h * factor))), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=[cv2.INTER_LINEAR, cv2.INTER_CUBIC][int(rng.integers(2))])
    kind = rng.random()
    if kind < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
    elif kind < 0.45:  # unsharp mask
        blurred = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 2.0))
        image = image + rng.uniform(0.2, 0.8) * (image - blurred)
    if rng.random() < 0.8:  # exposure: contrast about the mean, gamma, brightness
        mean = float(image.mean())
        image = np.clip((image - mean) * rng.uniform(0.75, 1.3) + mean + rng.uniform(-0.08, 0.08), 0, 1)
        image = np.power(image, rng.uniform(0.7, 1.4))
    if rng.random() < 0.3:
        image = image + rng.normal(0.0, rng.uniform(0.005, 0.03), image.shape)
    if rng.random() < 0.6:  # compression: PNG collections have none, JPEG ones vary
        quality = int(rng.integers(30, 96))
        encoded = cv2.imencode(".jpg", np.round(np.clip(image, 0, 1) * 255).astype(np.uint8),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        decoded = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
        assert decoded is not None  # OpenCV just encoded it
        image = decoded.astype(np.float32) / 255.0
    return image.astype(np.float32, copy=False)
