"""`kedge evaluate`: score a bundle's Keras model on any labelled folder.

With --split, only the files that the bundle's split manifest put in that split are
scored (for example the held-out test split of the training folder).
"""
from __future__ import annotations

import os
from typing import Any

from kedge.runtime.bundle.manifest import load_bundle
from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.sources import SourceSpec, labelled_items
from kedge.runtime.reports.evaluate import predict_items, score
from kedge.train.data import SPLITS
from kedge.train.models import load_keras_model


def evaluate_bundle(
    bundle_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    split: str | None = None,
    batch_size: int = 32,
    progress: bool = True,
    sources: SourceSpec | None = None,
) -> dict[str, Any]:
    bundle = load_bundle(bundle_dir)
    if split is not None and split not in SPLITS:
        raise KedgeError(f"--split {split}: choose from {', '.join(SPLITS)}")
    items = labelled_items(bundle, data_dir, split, sources or SourceSpec())
    model = load_keras_model(bundle.file("keras"))
    predictions = predict_items(lambda x: model(x, training=False).numpy(), items, batch_size, progress)
    report = score(predictions, bundle.classes)
    report.update({"bundle": str(bundle.path), "model": bundle.name, "data": str(data_dir),
                   "split": split or "all", "backend": "keras"})
    return report
