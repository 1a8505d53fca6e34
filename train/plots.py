"""Training curves and confusion-matrix PNGs (matplotlib, headless).

People read a curve or a confusion matrix faster than a CSV; these go into the bundle.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from kedge.runtime.bundle.manifest import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(
    history: Mapping[str, Sequence[float]], best_epoch: int, path: str | os.PathLike[str], title: str,
    val_by_source: Sequence[dict[str, float]] | None = None,
) -> None:
    """Loss and accuracy per epoch, training vs validation, with the kept epoch marked;
    with sources, a third panel of validation balanced accuracy per source (where a
    shortcut shows: one source climbs while another stays at chance)."""
    plt = _pyplot()
    epochs = range(1, len(history["loss"]) + 1)
    panels = 3 if val_by_source else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    if val_by_source:
        ax = axes[2]
        for source in sorted(val_by_source[0]):
            ax.plot(epochs, [row[source] for row in val_by_source], marker=".", label=f"source {source}")
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation balanced accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, history[key], label="train", color="tab:blue")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label="validation", color="tab:orange")
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"kept (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    _save(fig, path)


def plot_confusion(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike[str], title: str
) -> None:
    """Counts in each cell, coloured by the row-normalised rate (recall per true class)."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.4 + 1.1 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), constrained_layout=True)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, f"{value}\n{rates[i, j]:.0%}", ha="center", va="center",
                color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    _save(fig, path)


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
