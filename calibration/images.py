"""Calibration images: a deterministic, stratified subset of a folder, fed through the
runtime's one preprocessing function.

A folder with one sub-folder per class of the bundle is read as labelled and sampled
per class in proportion, so a rare class is not left out of the ranges; any other
folder is read as a flat set of images. The choice depends only on the file list and
the seed, so the same folder always gives the same set, and the set's fingerprint
(paths and sha256s) is part of the calibration cache key.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kedge.runtime.bundle.manifest import sha256_file
from kedge.runtime.errors import ImageError, KedgeError
from kedge.runtime.inputs.folders import class_trees, expand_inputs, is_image_file
from kedge.runtime.inputs.preprocess import PREPROCESS_VERSION, preprocess

DEFAULT_SIZE = 300


@dataclass
class CalibrationSet:
    """The chosen images, whether labels stratified the choice, and what was skipped."""

    root: Path
    paths: list[Path]
    stratified_by: list[str] | None  # the class folders used, or None for a flat folder
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable: (path, problem)

    def fingerprint(self) -> str:
        """sha256 over the preprocessing version and each image's relative path and sha256."""
        digest = hashlib.sha256(f"preprocessing {PREPROCESS_VERSION}\n".encode())
        for path in self.paths:
            digest.update(f"{path.relative_to(self.root).as_posix()}\t{sha256_file(path)}\n".encode())
        return digest.hexdigest()

    def batches(self, batch_size: int, progress: bool = True, desc: str = "Calibrating") -> Iterator[np.ndarray]:
        """Preprocessed batches (N, 224, 224, 3) float32, decoded lazily so the set is never all in memory."""
        with tqdm(total=len(self.paths), desc=desc, unit="img", disable=None if progress else True,
                  leave=False) as bar:
            for start in range(0, len(self.paths), batch_size):
                chunk = self.paths[start : start + batch_size]
                yield np.stack([preprocess(p) for p in chunk])
                bar.update(len(chunk))


def select_images(
    root: str | os.PathLike[str], classes: Sequence[str], size: int | None = DEFAULT_SIZE, seed: int = 0,
    only: Collection[str] | None = None,
) -> CalibrationSet:
    """Choose up to `size` readable images (None: all) from `root`, stratified by class
    folder when `root` has one per class in `classes` (or several such class trees side
    by side). `only`: paths relative to `root` allowed (a split of the bundle's
    split.csv, so test images never calibrate)."""
    root = Path(root)
    if not root.is_dir():
        raise KedgeError(f"{root}: no such calibration folder")
    trees = class_trees(root, classes)
    per_class = [[p for tree in trees for folder in sorted(tree.iterdir())
                  if folder.is_dir() and folder.name.lower() == c.lower() for p in _images_under(folder)]
                 for c in classes]
    labelled = bool(trees) and all(per_class)
    groups = per_class if labelled else [_images_under(root)]
    if only is not None:
        allowed = set(only)
        groups = [[p for p in group if p.relative_to(root).as_posix() in allowed] for group in groups]
    total = sum(len(g) for g in groups)
    if total == 0:
        raise KedgeError(f"{root}: no calibration images found (looked for "
                         f"{', '.join(c for c in classes) if labelled else 'image files'} recursively"
                         f"{' in the chosen split' if only is not None else ''})")
    wanted = total if size is None or size >= total else size
    rng = np.random.default_rng(seed)
    chosen: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for group, quota in zip(groups, _quotas([len(g) for g in groups], wanted), strict=True):
        taken = 0
        for index in rng.permutation(len(group)):  # readable ones in seeded order until the quota is met
            if taken == quota:
                break
            try:
                preprocess(group[index])
            except ImageError as err:
                skipped.append((str(group[index]), err.problem))
                continue
            chosen.append(group[index])
            taken += 1
    if not chosen:
        raise KedgeError(f"{root}: none of the calibration images could be read ({skipped[0][0]}: {skipped[0][1]})")
    chosen.sort(key=lambda p: p.as_posix())
    return CalibrationSet(root, chosen, list(classes) if labelled else None, skipped)


def _images_under(folder: Path) -> list[Path]:
    return sorted((p for p in expand_inputs([folder]) if is_image_file(p)), key=lambda p: p.as_posix())


def _quotas(counts: list[int], wanted: int) -> list[int]:
    """Split `wanted` over groups in proportion to their sizes (largest remainders), at least one each."""
    total = sum(counts)
    exact = [wanted * c / total for c in counts]
    quotas = [min(c, max(1, int(e))) if c else 0 for c, e in zip(counts, exact, strict=True)]
    order = sorted(range(len(counts)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    while sum(quotas) < wanted:
        grew = False
        for i in order:
            if sum(quotas) < wanted and quotas[i] < counts[i]:
                quotas[i] += 1
                grew = True
        if not grew:
            break
    return quotas
