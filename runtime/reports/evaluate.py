"""Score any predictor on labelled images: overall, per class and per file format.

Backend-agnostic on purpose (it takes a function from a batch of preprocessed images
to class probabilities), so Keras evaluation now and ONNX Runtime / TensorRT parity
later score with the same code. Per-format metrics matter here because in the public
knee sets the file format partly gives away the class (shared/data/README.md).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from kedge.runtime.errors import ImageError
from kedge.runtime.inputs.folders import LabelledImage
from kedge.runtime.inputs.preprocess import preprocess
from kedge.runtime.inputs.sources import UNKNOWN
from kedge.runtime.reports.metrics import classification_report, group_metrics, metrics_by, worst_group

NOT_VALIDATED_MARGIN = 0.10  # a source below chance + this is "not validated for images like it"

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
    """Classification report, plus the per-group metrics (runtime.reports.metrics.group_metrics)
    overall, per source and per file format: a model is judged per source, never on
    overall accuracy alone."""
    y_true = np.array([i.label for i in predictions.items], dtype=np.int64)
    probs = predictions.probabilities
    y_pred = probs.argmax(axis=1) if len(y_true) else y_true
    report = classification_report(y_true, y_pred, classes)
    if len(y_true):
        overall = group_metrics(y_true, probs, classes)
        report.update({key: overall[key] for key in ("balanced_accuracy", "top_answer", "roc_auc", "roc_auc_ci95",
                                                     "sensitivity", "specificity", "threshold") if key in overall})
    sources = [i.source for i in predictions.items]
    known = bool(sources) and set(sources) != {UNKNOWN}  # "all" alone: no sources were given
    report["by_source"] = metrics_by(sources, y_true, probs, classes) if known else {}
    report["by_format"] = metrics_by([i.format for i in predictions.items], y_true, probs, classes)
    worst = worst_group(report["by_source"])
    report["worst_source"] = worst[0] if worst else None
    report["failures"] = [{"path": p, "problem": m} for p, m in predictions.failures]
    return report


def not_validated(report: dict[str, Any], margin: float = NOT_VALIDATED_MARGIN) -> list[str]:
    """Sources whose balanced accuracy is below chance + margin: the model is not
    validated for images like theirs."""
    return [name for name, row in report.get("by_source", {}).items()
            if not math.isnan(row["balanced_accuracy"]) and row["balanced_accuracy"] < row["chance"] + margin]


def group_table(groups: dict[str, Any], classes: Sequence[str], label: str) -> list[str]:
    """Rows of per-group metrics (per source or per format) for a terminal."""
    binary = len(classes) == 2
    head = f"  {label:<12}{'n':>5}{'acc':>7}{'bal.acc':>9}  {'top answer':<24}" + \
        "".join(f"{'rec ' + c[:10]:>16}" for c in classes) + (f"{'AUC (95% CI)':>22}" if binary else "")
    lines = [head]
    for name, row in groups.items():
        top = row["top_answer"]
        recalls = "".join(f"{row['recall'][c]['recall']:>16.3f}" if c in row["recall"] else f"{'-':>16}"
                          for c in classes)
        auc = ""
        if binary:
            low, high = row["roc_auc_ci95"]
            auc = f"{row['roc_auc']:>8.3f} ({low:.2f}-{high:.2f})" if not math.isnan(row["roc_auc"]) else f"{'-':>22}"
            auc = f"{auc:>22}"
        lines.append(f"  {name[:12]:<12}{row['n']:>5}{row['accuracy']:>7.3f}{row['balanced_accuracy']:>9.3f}  "
                     f"{top['class'][:14] + ' ' + format(top['share'], '.0%'):<24}{recalls}{auc}")
    return lines


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A compact human-readable table of a score() result."""
    low, high = report["accuracy_ci95"]
    lines = [title] if title else []
    lines.append(f"accuracy {report['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}, n={report['n']})   "
                 f"macro-F1 {report['macro_f1']:.3f}")
    lines.append(f"  {'class':<14}{'precision':>10}{'recall':>8}{'f1':>7}{'n':>6}")
    for name, row in report["per_class"].items():
        lines.append(f"  {name:<14}{row['precision']:>10.3f}{row['recall']:>8.3f}{row['f1']:>7.3f}{row['support']:>6}")
    if "balanced_accuracy" in report:
        extra = ""
        if "roc_auc" in report and not math.isnan(report["roc_auc"]):
            low, high = report["roc_auc_ci95"]
            extra = (f"   ROC AUC {report['roc_auc']:.3f} (95% CI {low:.3f}-{high:.3f}), sensitivity "
                     f"{report['sensitivity']:.3f}, specificity {report['specificity']:.3f} at p>=0.5")
        lines.append(f"balanced accuracy {report['balanced_accuracy']:.3f}{extra}")
    classes = list(report["per_class"])
    if report.get("by_source"):
        lines.extend(group_table(report["by_source"], classes, "source"))
        for name in not_validated(report):
            lines.append(f"  NOT VALIDATED for images like source {name}'s: balanced accuracy within "
                         f"{NOT_VALIDATED_MARGIN} of chance")
    else:
        lines.append("  no sources given: no per-source check was possible (--sources or --source-rule)")
    if len(report.get("by_format", {})) > 1:
        lines.extend(group_table(report["by_format"], classes, "format"))
    matrix = report["confusion_matrix"]
    lines.append("  confusion (rows true, cols predicted): " + " | ".join(" ".join(map(str, r)) for r in matrix))
    for failure in report.get("failures", []):
        lines.append(f"  skipped {failure['path']}: {failure['problem']}")
    return "\n".join(lines)
