"""What `kedge preprocess` shows of the model's input: each tensor's statistics, and the
tensor itself as an 8-bit 224x224 PNG, so a person sees what the model sees."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kedge.runtime.bundle.manifest import atomic_path
from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.preprocess import PREPROCESS_VERSION


def tensor_summary(path: Path, x: np.ndarray) -> dict[str, Any]:
    return {"path": str(path), "shape": list(x.shape), "min": float(x.min()), "mean": float(x.mean()),
            "max": float(x.max()), "preprocessing": PREPROCESS_VERSION}


class ViewWriter:
    """Writes model inputs as PNGs into one folder, one distinct name per image: Normal/1.png
    and Osteoporosis/1.png must not overwrite each other."""

    def __init__(self, folder: Path) -> None:
        if folder.exists() and not folder.is_dir():
            raise KedgeError(f"{folder}: --out-dir exists and is not a folder")
        self.folder = folder
        self._used: set[str] = set()

    def write(self, path: Path, x: np.ndarray) -> Path:
        name, n = f"{path.stem}.png", 1
        while name in self._used:
            n += 1
            name = f"{path.stem}-{n}.png"
        self._used.add(name)
        target = self.folder / name
        try:
            with atomic_path(target) as tmp:
                tmp.write_bytes(cv2.imencode(".png", np.round(x[:, :, 0] * 255).astype(np.uint8))[1].tobytes())
        except OSError as err:  # a file where a folder on the way should be, permissions, a full disk
            raise KedgeError(f"{target}: cannot be written ({err.strerror or type(err).__name__})") from None
        return target
