"""Occlusion sensitivity: which parts of the radiograph drove the prediction.

Neither published model ends in global pooling plus one dense layer, so plain CAM
does not apply. Occlusion needs no gradients: grey out one patch at a time (with the
image's mean), run every masked copy through the same backend in batches, and map
how much the predicted class's probability drops. It therefore works on TensorRT,
ONNX Runtime and Keras alike, on the device that runs the model.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.backends.base import Backend, Session
from kedge.runtime.errors import KedgeError


@dataclass
class Explanation:
    heatmap: np.ndarray  # (224, 224) float32: mean drop of the class probability when each pixel is hidden
    class_index: int
    probability: float
    patch: int
    stride: int


def occlusion(backend: Backend | Session, image: np.ndarray, class_index: int | None = None, patch: int = 32,
              stride: int = 16, batch_size: int = 32) -> Explanation:
    """Occlusion map of one preprocessed image (224, 224, 3) for `class_index` (default: the predicted)."""
    if not 0 < stride <= patch <= image.shape[0]:
        raise KedgeError(f"occlusion: need 0 < stride ({stride}) <= patch ({patch}) <= {image.shape[0]}")
    probabilities = backend.infer(image[None])[0]
    target = int(np.argmax(probabilities)) if class_index is None else class_index
    side = image.shape[0]
    starts = list(range(0, side - patch + 1, stride))
    if starts[-1] != side - patch:
        starts.append(side - patch)  # the last row and column of patches reach the border
    corners = [(y, x) for y in starts for x in starts]
    fill = image.mean(axis=(0, 1))
    drops = np.empty(len(corners), np.float32)
    for begin in range(0, len(corners), batch_size):
        chunk = corners[begin : begin + batch_size]
        batch = np.repeat(image[None], len(chunk), axis=0)
        for k, (y, x) in enumerate(chunk):
            batch[k, y : y + patch, x : x + patch] = fill
        drops[begin : begin + len(chunk)] = probabilities[target] - backend.infer(batch)[:, target]
    total = np.zeros((side, side), np.float32)
    count = np.zeros((side, side), np.float32)
    for (y, x), drop in zip(corners, drops, strict=True):
        total[y : y + patch, x : x + patch] += drop
        count[y : y + patch, x : x + patch] += 1
    return Explanation(total / np.maximum(count, 1), target, float(probabilities[target]), patch, stride)


MAP_KINDS = {"occlusion": ("occlusion sensitivity", "drop in class probability when hidden"),
             "gradcam": ("Grad-CAM (Keras)", "Grad-CAM, relative to its peak")}


def require_matplotlib(what: str = "kedge explain") -> None:
    """Checked before any model runs, so a missing extra costs one line, not a wasted minute."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise KedgeError(f"{what} needs matplotlib to draw: pip install 'kedge[explain]'")


def render(image: np.ndarray, heatmap: np.ndarray, title: str, path: str | os.PathLike[str],
           kind: str = "occlusion") -> None:
    """Save the radiograph and the map over it side by side, with a colour bar and a title."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kedge.runtime.bundle.manifest import atomic_path

    grey = image[:, :, 0]
    limit = float(np.abs(heatmap).max()) or 1.0
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4.6))
    left.imshow(grey, cmap="gray", vmin=0, vmax=1)
    left.set_title("input (as the model sees it)")
    right.imshow(grey, cmap="gray", vmin=0, vmax=1)
    from matplotlib import cm, colors

    scale = colors.Normalize(-limit, limit)
    overlay = matplotlib.colormaps["RdBu_r"](scale(heatmap))
    overlay[..., 3] = 0.75 * np.abs(heatmap) / limit  # unimportant areas stay clear, so the bone shows through
    right.imshow(overlay)
    shown: Any = cm.ScalarMappable(scale, "RdBu_r")
    panel, label = MAP_KINDS[kind]
    right.set_title(panel)
    for ax in (left, right):
        ax.set_axis_off()
    fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04, label=label)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


Explainer = Callable[[Any, np.ndarray, "int | None"], Explanation]  # (opened runner, image, class) -> map


def explain_image(image: Path, bundles: Sequence[Any], out: Path | None, open_runner: Callable[[Any], tuple[Any, str]],
                  explainer: Explainer, method: str, class_name: str | None = None,
                  log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One PNG per bundle for `image`: `open_runner(bundle)` gives (runner, form name),
    `explainer` makes the map. Returns what was written, one dict per model."""
    from kedge.runtime.inputs.preprocess import preprocess

    x = preprocess(image)
    written = []
    for bundle in bundles:
        classes = bundle.classes
        if class_name is not None and class_name not in classes:
            raise KedgeError(f"--class {class_name!r}: {bundle.name} has {', '.join(classes)}")
        runner, form_name = open_runner(bundle)
        with runner:
            result = explainer(runner, x, classes.index(class_name) if class_name else None)
        target = explain_path(image, out, bundle.name, several=len(bundles) > 1)
        title = (f"{image.name}: {bundle.name} says {classes[result.class_index]} "
                 f"(p = {result.probability:.2f}; {form_name})")
        render(x, result.heatmap, title, target, method)
        peak = np.unravel_index(int(np.argmax(result.heatmap)), result.heatmap.shape)
        written.append({"image": str(image), "model": bundle.name, "form": form_name, "png": str(target),
                        "class": classes[result.class_index], "probability": result.probability,
                        "method": method, "peak_yx": [int(peak[0]), int(peak[1])]})
        if log is not None:
            log(f"{target}: {title}")
    return written


def explain_path(image: Path, out: Path | None, model: str, several: bool) -> Path:
    """--out as given for one model; with several, one file each, named after the model."""
    if out is None:
        return Path(f"{image.stem}.{model}.explain.png")
    return out.with_name(f"{out.stem}.{model}{out.suffix}") if several else out
