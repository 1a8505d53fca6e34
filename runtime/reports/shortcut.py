"""The shortcut audit behind `kedge audit`: does a model answer from the image's
source instead of the bone?

Two checks, both on labelled images with known sources:
- **one answer per source**: a source where one class takes at least TOP_SHARE_LIMIT
  of the answers (with at least MIN_IMAGES images) is flagged. A model that reads
  bone cannot give every image of a mixed source the same answer.
- **cue test**: a small softmax regression, cross-validated, predicts each image's
  source from the model's answers. The same regression on the true labels says how
  much source the labels alone carry (the classes are mixed unevenly across sources).
  When the answers predict the source clearly better than the labels do (the 95 %
  Wilson lower bound of the answers' accuracy above the labels' accuracy and above
  chance, the largest source's share), the answers follow the source more than the
  truth does: the model has learnt the source. The same regression on the full
  log-probabilities is reported too, for information only: confidence may differ by
  source for honest reasons (a blurrier collection is harder), so it does not flag.

numpy only: it runs on the lean install, on any backend's outputs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.reports.metrics import wilson_interval

TOP_SHARE_LIMIT = 0.90
MIN_IMAGES = 5
FOLDS = 5


def _softmax_regression(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-2,
                        steps: int = 300, lr: float = 0.5) -> np.ndarray:
    """Weights (features + 1, classes) by full-batch gradient descent on cross-entropy."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros((xb.shape[1], n_classes))
    target = np.eye(n_classes)[y]
    for _ in range(steps):
        logits = xb @ w
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        grad = xb.T @ (p - target) / len(x) + l2 * np.vstack([w[:-1], np.zeros((1, n_classes))])
        w -= lr * grad
    return w


def cross_validated_accuracy(x: np.ndarray, y: np.ndarray, folds: int = FOLDS, seed: int = 0) -> float:
    """Accuracy of the softmax regression on held-out folds (stratified by y, seeded)."""
    n_classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), np.int64)
    for k in range(n_classes):
        members = np.flatnonzero(y == k)
        rng.shuffle(members)
        fold_of[members] = np.arange(len(members)) % folds
    correct = 0
    for fold in range(folds):
        test, train = fold_of == fold, fold_of != fold
        if not test.any() or not train.any():
            continue
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
        w = _softmax_regression((x[train] - mean) / std, y[train], n_classes)
        xt = np.hstack([(x[test] - mean) / std, np.ones((int(test.sum()), 1))])
        correct += int(((xt @ w).argmax(axis=1) == y[test]).sum())
    return correct / len(y)


def cue_test(probabilities: np.ndarray, labels: np.ndarray, sources: Sequence[str],
             n_classes: int) -> dict[str, Any] | None:
    """Source predicted from the outputs vs from the labels; None with fewer than 2 sources."""
    names = sorted(set(sources))
    if len(names) < 2:
        return None
    y = np.array([names.index(s) for s in sources])
    answers = np.eye(n_classes)[probabilities.argmax(axis=1)]
    from_answers = cross_validated_accuracy(answers, y)
    from_outputs = cross_validated_accuracy(np.log(np.clip(probabilities, 1e-6, 1.0)), y)
    from_labels = cross_validated_accuracy(np.eye(n_classes)[labels], y)
    chance = float(np.bincount(y).max() / len(y))
    low, high = wilson_interval(round(from_answers * len(y)), len(y))
    return {"sources": names, "n": len(y), "from_answers": from_answers, "from_answers_ci95": [low, high],
            "from_outputs": from_outputs, "from_labels": from_labels, "chance": chance,
            "flagged": bool(low > max(from_labels, chance))}


def flags(by_source: dict[str, dict[str, Any]], cue: dict[str, Any] | None) -> list[str]:
    """One line per finding; empty when the audit passes."""
    found = []
    for name, row in by_source.items():
        top = row["top_answer"]
        if row["n"] >= MIN_IMAGES and top["share"] >= TOP_SHARE_LIMIT:
            found.append(f"source {name}: {top['share']:.0%} of its {row['n']} images get one answer "
                         f"({top['class']})")
    if cue and cue["flagged"]:
        found.append(f"cue test: the answers predict the source ({cue['from_answers']:.3f}, 95% CI "
                     f"{cue['from_answers_ci95'][0]:.3f}-{cue['from_answers_ci95'][1]:.3f}) better than the true "
                     f"labels do ({cue['from_labels']:.3f}; chance {cue['chance']:.3f}): the model follows the source")
    return found


def audit(predictions: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Score predictions per source and per format, run the cue test, and list flags."""
    from kedge.runtime.reports.evaluate import score

    report = score(predictions, classes)
    labels = np.array([i.label for i in predictions.items], np.int64)
    cue = cue_test(predictions.probabilities, labels, [i.source for i in predictions.items], len(classes))
    report["cue_test"] = cue
    report["flags"] = flags(report["by_source"], cue)
    report["limits"] = {"top_share": TOP_SHARE_LIMIT, "min_images": MIN_IMAGES, "folds": FOLDS}
    return report


def audit_bundle(bundle: Any, items: Sequence[Any], open_runner: Callable[[], tuple[Any, str]], data: Path,
                 split: str | None, split_manifest: Path | None, batch_size: int,
                 progress: bool = True) -> dict[str, Any]:
    """`kedge audit`: the bundle's answers on the labelled items (`open_runner` opens the
    chosen backend: (runner, what it is)), audited per source and per format, with the
    envelope's section when the bundle has one (its checks recorded beside the answers)."""
    from kedge.runtime.envelope.audit import GateRecorder, envelope_section, image_splits
    from kedge.runtime.envelope.gate import bundle_envelope
    from kedge.runtime.errors import KedgeError
    from kedge.runtime.inputs.sources import UNKNOWN
    from kedge.runtime.reports.evaluate import predict_items

    if items and all(item.source == UNKNOWN for item in items):  # nothing to audit: say so, never "passed"
        raise KedgeError(f"{data}: no source is known for these images, so no source check is possible: give "
                         "--sources or --source-rule (or a bundle whose split.csv names them)")
    runner, description = open_runner()
    envelope = bundle_envelope(bundle)
    gate = None if envelope is None else GateRecorder(runner, envelope)
    with runner:
        predictions = predict_items(gate or runner, items, batch_size, progress=progress)
    report = audit(predictions, bundle.classes)
    report["envelope"] = None if gate is None else envelope_section(
        predictions, gate.checks, gate.envelope, bundle.classes, image_splits(bundle, data, split_manifest))
    report.update({"bundle": str(bundle.path), "model": bundle.name, "data": str(data),
                   "split": split or "all", "backend": description})
    return report


def format_audit(report: dict[str, Any]) -> str:
    from kedge.runtime.reports.evaluate import group_table

    classes = list(report["per_class"])
    balanced = report.get("balanced_accuracy", float("nan"))
    lines = [f"{report['model']} on {report['data']} ({report['split']}), {report['backend']}: n={report['n']}, "
             f"accuracy {report['accuracy']:.3f}, balanced accuracy {balanced:.3f}"]
    if report["by_source"]:
        lines += ["per source:"] + group_table(report["by_source"], classes, "source")
    else:
        lines.append("no sources: give --sources or --source-rule (the bundle's split.csv has none for these files)")
    cue = report.get("cue_test")
    if cue:
        low, high = cue["from_answers_ci95"]
        lines.append(f"cue test (source predicted by a {FOLDS}-fold softmax regression): from the answers "
                     f"{cue['from_answers']:.3f} (95% CI {low:.3f}-{high:.3f}); from the true labels "
                     f"{cue['from_labels']:.3f}; chance {cue['chance']:.3f}; from the log-probabilities "
                     f"{cue['from_outputs']:.3f} (information only)")
    lines += ["per file format:"] + group_table(report["by_format"], classes, "format")
    if report["flags"]:
        lines += [f"FLAGGED: {flag}" for flag in report["flags"]]
    else:
        lines.append(f"passed: no source gets one answer for {TOP_SHARE_LIMIT:.0%} of its images, and the outputs "
                     "carry no more source than the labels do")
    return "\n".join(lines)
