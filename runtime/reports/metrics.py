"""Classification metrics in plain numpy, shared by evaluation and parity.

They live in the runtime (not train/) because parity runs on a lean install too.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Labels = Sequence[int] | np.ndarray  # class indices, a list or an integer array


def wilson_interval(successes: float, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion (sound at small n and near 0 or 1)."""
    if total == 0:
        return (math.nan, math.nan)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def confusion_matrix(y_true: Labels, y_pred: Labels, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def classification_report(
    y_true: Labels, y_pred: Labels, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy with its 95 % Wilson interval, per-class and macro precision/recall/F1,
    and the confusion matrix. A class with no predictions (or no samples) scores 0."""
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    true_pos = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    actual = matrix.sum(axis=1).astype(float)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(true_pos), where=both > 0)
    low, high = wilson_interval(correct, total)
    return {
        "n": total,
        "accuracy": correct / total if total else math.nan,
        "accuracy_ci95": [low, high],
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
    }


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN without both classes."""
    y_true = np.asarray(y_true, dtype=bool)
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    if not positives or not negatives:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=float)
    sorted_scores = np.asarray(scores)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    u = ranks[y_true].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def bootstrap_auc_interval(y_true: np.ndarray, scores: np.ndarray, rounds: int = 1000,
                           seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the ROC AUC (resampling images, seeded)."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    values = []
    for _ in range(rounds):
        pick = rng.integers(0, n, n)
        value = roc_auc(y_true[pick], scores[pick])
        if not math.isnan(value):
            values.append(value)
    if len(values) < rounds // 2:
        return (math.nan, math.nan)
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))


def group_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """What a group of images (one source, one format) needs to show a shortcut:
    accuracy and balanced accuracy (mean recall over the classes present), recall per
    class, and the share of the most frequent answer, each proportion with its 95 %
    Wilson interval. Two classes add ROC AUC (bootstrap interval) and sensitivity and
    specificity at the operating threshold (p >= 0.5 for the second class)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probabilities.argmax(axis=1) if len(y_true) else y_true
    n = len(y_true)
    correct = int((y_true == y_pred).sum())
    recalls = {}
    for k, name in enumerate(classes):
        mask = y_true == k
        if mask.any():
            hits = int((y_pred[mask] == k).sum())
            recalls[name] = {"recall": hits / int(mask.sum()), "ci95": list(wilson_interval(hits, int(mask.sum()))),
                             "n": int(mask.sum())}
    answers = np.bincount(y_pred, minlength=len(classes)) if n else np.zeros(len(classes), np.int64)
    top = int(answers.argmax())
    result: dict[str, Any] = {
        "n": n,
        "accuracy": correct / n if n else math.nan,
        "accuracy_ci95": list(wilson_interval(correct, n)),
        "balanced_accuracy": float(np.mean([r["recall"] for r in recalls.values()])) if recalls else math.nan,
        "chance": 1 / len(recalls) if recalls else math.nan,
        "recall": recalls,
        "class_counts": {name: int((y_true == k).sum()) for k, name in enumerate(classes)},
        "top_answer": {"class": classes[top], "share": int(answers[top]) / n if n else math.nan,
                       "ci95": list(wilson_interval(int(answers[top]), n))},
    }
    if len(classes) == 2:
        positive = y_true == 1
        auc = roc_auc(positive, probabilities[:, 1]) if n else math.nan
        result["roc_auc"] = auc
        result["roc_auc_ci95"] = list(bootstrap_auc_interval(positive, probabilities[:, 1])) if not math.isnan(auc) \
            else [math.nan, math.nan]
        result["sensitivity"] = recalls.get(classes[1], {}).get("recall", math.nan)
        result["specificity"] = recalls.get(classes[0], {}).get("recall", math.nan)
        result["threshold"] = 0.5
    return result


def metrics_by(keys: Sequence[str], y_true: np.ndarray, probabilities: np.ndarray,
               classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """group_metrics for each distinct key (a source, a file format), keys sorted."""
    keys_array = np.asarray(keys)
    return {key: group_metrics(y_true[keys_array == key], probabilities[keys_array == key], classes)
            for key in sorted(set(keys_array.tolist()))}


def worst_group(groups: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """The group with the lowest balanced accuracy (NaN last), or None."""
    scored = [(k, v) for k, v in groups.items() if not math.isnan(v["balanced_accuracy"])]
    return min(scored, key=lambda kv: kv[1]["balanced_accuracy"]) if scored else None
