"""Score any predictor on labelled images: overall, per class and per file format.

Backend-agnostic on purpose (it takes a function from a batch of preprocessed images
to class probabilities), so Keras evaluation now and ONNX Runtime / TensorRT parity
later score with the same code. Per-format metrics matter here because in the public
knee sets the file format partly gives away the class (shared/data/README.md).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from kedge.runtime.errors import ImageError
from kedge.runtime.folders import LabelledImage
from kedge.runtime.metrics import classification_report, wilson_interval
from kedge.runtime.preprocess import preprocess

PredictFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Predictions:
    items: list[LabelledImage]  # the images that could be read, in order
    probabilities: np.ndarray  # (len(items), n_classes)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, problem)


def predict_items(
    predict: PredictFn, items: Sequence[LabelledImage], batch_size: int = 32, progress: bool = True
) -> Predictions:
    """Preprocess and predict in batches; unreadable files are collected, not fatal."""
    done: list[LabelledImage] = []
    outputs: list[np.ndarray] = []
    failures: list[tuple[str, str]] = []
    with tqdm(total=len(items), desc="Predicting", unit="img", disable=None if progress else True, leave=False) as bar:
        for start in range(0, len(items), batch_size):
            batch, tensors = [], []
            for item in items[start : start + batch_size]:
                try:
                    tensors.append(preprocess(item.path))
                    batch.append(item)
                except ImageError as err:
                    failures.append((str(item.path), err.problem))
            if tensors:
                outputs.append(np.asarray(predict(np.stack(tensors)), dtype=np.float32))
                done.extend(batch)
            bar.update(len(items[start : start + batch_size]))
    width = outputs[0].shape[1] if outputs else 0
    probabilities = np.concatenate(outputs) if outputs else np.zeros((0, width), np.float32)
    return Predictions(done, probabilities, failures)


def score(predictions: Predictions, classes: Sequence[str]) -> dict[str, Any]:
    """Classification report plus accuracy (with 95 % CI) per file format."""
    y_true = np.array([i.label for i in predictions.items], dtype=np.int64)
    y_pred = predictions.probabilities.argmax(axis=1) if len(y_true) else y_true
    report = classification_report(y_true, y_pred, classes)
    by_format: dict[str, Any] = {}
    formats = np.array([i.format for i in predictions.items])
    for fmt in sorted(set(formats.tolist())):
        mask = formats == fmt
        correct, total = int((y_true[mask] == y_pred[mask]).sum()), int(mask.sum())
        by_format[fmt] = {
            "n": total,
            "accuracy": correct / total,
            "accuracy_ci95": list(wilson_interval(correct, total)),
            "class_counts": {c: int((y_true[mask] == k).sum()) for k, c in enumerate(classes)},
        }
    report["by_format"] = by_format
    report["failures"] = [{"path": p, "problem": m} for p, m in predictions.failures]
    return report


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A compact human-readable table of a score() result."""
    low, high = report["accuracy_ci95"]
    lines = [title] if title else []
    lines.append(f"accuracy {report['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}, n={report['n']})   "
                 f"macro-F1 {report['macro_f1']:.3f}")
    lines.append(f"  {'class':<14}{'precision':>10}{'recall':>8}{'f1':>7}{'n':>6}")
    for name, row in report["per_class"].items():
        lines.append(f"  {name:<14}{row['precision']:>10.3f}{row['recall']:>8.3f}{row['f1']:>7.3f}{row['support']:>6}")
    if len(report.get("by_format", {})) > 1:
        parts = [f"{fmt} {v['accuracy']:.3f} (n={v['n']})" for fmt, v in report["by_format"].items()]
        lines.append("  by format: " + ", ".join(parts))
    matrix = report["confusion_matrix"]
    lines.append("  confusion (rows true, cols predicted): " + " | ".join(" ".join(map(str, r)) for r in matrix))
    for failure in report.get("failures", []):
        lines.append(f"  skipped {failure['path']}: {failure['problem']}")
    return "\n".join(lines)
