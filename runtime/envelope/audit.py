"""The envelope's part of `kedge audit`: per source, the share of images inside, and the
metrics inside and outside.

A validated source is judged by its labels, separately on the images the gate lets
through (what a user gets) and on those it withholds. An unvalidated source (for
the shipped models, collection A, whose labels cannot validate a model: issue 19)
is described, not judged: its share outside and the mix of answers given.
Images the envelope was fitted or thresholded on (the validated sources' train and
val splits) are counted, so a reader knows when the shares are not held out.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.envelope.gate import Check, Envelope
from kedge.runtime.reports.metrics import group_metrics


class GateRecorder:
    """Wraps a predict function: records each batch's envelope checks, in order."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], envelope: Envelope) -> None:
        self.predict, self.envelope = predict, envelope
        self.checks: list[Check] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.checks.extend(self.envelope.check(batch))
        return self.predict(batch)


def _metrics(y: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, Any] | None:
    if not len(y):
        return None
    row = group_metrics(y, probabilities, classes)
    keep = ("n", "accuracy", "accuracy_ci95", "balanced_accuracy", "roc_auc", "top_answer")
    return {k: row[k] for k in keep if k in row}


def _answers(probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    if not len(probabilities):
        return {c: 0 for c in classes}
    counts = np.bincount(probabilities.argmax(axis=1), minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts, strict=True)}


def image_splits(bundle: Any, data: Path, split_manifest: Path | None) -> dict[str, str]:
    """Image path -> split, from split_manifest or the bundle's split.csv ({} without one)."""
    from kedge.runtime.inputs.folders import read_split_manifest

    if split_manifest is None and not bundle.has("split_manifest"):
        return {}
    assigned = read_split_manifest(split_manifest) if split_manifest is not None else bundle.split
    return {str(Path(data) / relative): name for relative, name in assigned.items()}


def envelope_section(predictions: Any, checks: Sequence[Check], envelope: Envelope, classes: Sequence[str],
                     splits: dict[str, str]) -> dict[str, Any]:
    """Per source: n, inside share, metrics inside/outside (validated) or answer mix
    (unvalidated). `splits` maps an image path to its split (train, val, test)."""
    items = predictions.items
    inside = np.array([c.inside for c in checks], bool)
    y = np.array([i.label for i in items], np.int64)
    probabilities = predictions.probabilities
    sources: dict[str, Any] = {}
    for source in sorted({i.source for i in items}):
        mask = np.array([i.source == source for i in items], bool)
        validated = source in envelope.validated
        fitted = sum(1 for i, m in zip(items, mask, strict=True)
                     if m and validated and splits.get(str(i.path)) in ("train", "val"))
        row: dict[str, Any] = {"validated": validated, "n": int(mask.sum()), "inside": int((mask & inside).sum()),
                               "inside_share": float((mask & inside).sum() / mask.sum()),
                               "not_held_out": fitted}
        if validated:
            row["metrics_inside"] = _metrics(y[mask & inside], probabilities[mask & inside], classes)
            row["metrics_outside"] = _metrics(y[mask & ~inside], probabilities[mask & ~inside], classes)
        else:
            row["answers_inside"] = _answers(probabilities[mask & inside], classes)
            row["answers_outside"] = _answers(probabilities[mask & ~inside], classes)
        sources[source] = row
    return {"validated": envelope.validated, "threshold": envelope.threshold, "by_source": sources,
            "outside_share": float((~inside).mean()) if len(inside) else math.nan}


def format_section(section: dict[str, Any] | None, model: str) -> str:
    if section is None:
        return f"input envelope: {model} has none, so no input check is possible (`kedge envelope` fits one)"
    lines = [f"input envelope (validated on {', '.join(section['validated'])}): per source, inside and outside",
             f"  {'source':<10}{'role':<13}{'n':>5}{'inside':>8}  inside: bal.acc (n)   outside: bal.acc (n)"]
    for name, row in section["by_source"].items():
        head = f"  {name[:10]:<10}{'validated' if row['validated'] else 'unvalidated':<13}{row['n']:>5}" \
               f"{row['inside_share']:>8.0%}  "
        if row["validated"]:
            lines.append(head + f"{_bal(row['metrics_inside']):<22}{_bal(row['metrics_outside'])}")
        else:
            lines.append(head + f"answers inside {_mix(row['answers_inside'])}; outside {_mix(row['answers_outside'])}"
                         " (not judged by its labels)")
        if row["not_held_out"]:
            lines.append(f"  {'':<10}note: {row['not_held_out']} of these images fitted or thresholded the envelope "
                         "(train/val split): use --split test for a held-out check")
    return "\n".join(lines)


def _bal(metrics: dict[str, Any] | None) -> str:
    if metrics is None:
        return "- (0)"
    value = metrics["balanced_accuracy"]
    return f"{'-' if math.isnan(value) else format(value, '.3f')} ({metrics['n']})"


def _mix(answers: dict[str, int]) -> str:
    total = sum(answers.values())
    if not total:
        return "none"
    return ", ".join(f"{c} {n / total:.0%}" for c, n in answers.items() if n) + f" (n={total})"
