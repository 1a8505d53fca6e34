"""The epoch loop: seeded batches, source-erasing augmentation, per-(source, class)
weights, and checkpoint choice by per-source balanced accuracy on the validation split,
never an epoch that gives one answer to a whole source while another epoch does not.

Why not `model.fit` on a tf.data pipeline: its parallel map and shuffle buffers made
two runs with one seed differ by several points, and it cannot weight the loss per
(source, class) and choose checkpoints by per-source metrics without callbacks that
re-predict the validation split anyway. Here every random draw comes from numpy
generators seeded by (seed, epoch, index), batches run one `train_on_batch` at a time
on the main thread, and TensorFlow's op determinism is on, so one seed on one machine
gives the same weights.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.folders import LabelledImage
from kedge.runtime.inputs.preprocess import preprocess
from kedge.runtime.reports.metrics import metrics_by
from kedge.runtime.reports.shortcut import MIN_IMAGES, TOP_SHARE_LIMIT
from kedge.train.augment import AugmentSettings, augment, image_rng

if TYPE_CHECKING:
    from kedge.train.adversary import Adversary

BALANCE = ("source-class", "class", "none")
SELECT = ("worst-source", "mean-source", "val-loss")


@dataclass
class LoopSettings:
    epochs: int
    batch_size: int = 16
    seed: int = 0
    patience: int = 10  # epochs without a better selection score; 0 = never stop early
    balance: str = "source-class"
    select: str = "worst-source"
    unvalidated: tuple[str, ...] = ()  # sources the selection score ignores (labels that are no target)
    train_unvalidated: bool = True  # False: their images are left out of the training split too
    augment: AugmentSettings | None = field(default_factory=AugmentSettings)


@dataclass
class LoopResult:
    history: dict[str, list[float]]
    val_by_source: list[dict[str, float]]  # per epoch: source -> balanced accuracy
    best_epoch: int  # 1-based
    seconds: list[float]


def load_images(items: Sequence[LabelledImage], progress: bool, desc: str) -> np.ndarray:
    """Each item through the runtime's own preprocessing (as `kedge infer` sees it), kept
    as one grey channel: (N, 224, 224) float32."""
    out = np.empty((len(items), 224, 224), np.float32)
    for i, item in enumerate(tqdm(items, desc=desc, unit="img", disable=None if progress else True, leave=False)):
        out[i] = preprocess(item.path)[:, :, 0]
    return out


def sample_weights(items: Sequence[LabelledImage], balance: str) -> np.ndarray:
    """Loss weights so that every cell counts the same: a cell is a (source, class) pair
    for "source-class", a class for "class". Mean weight 1."""
    if balance == "none":
        return np.ones(len(items), np.float32)
    keys = [(i.source, i.label) if balance == "source-class" else i.label for i in items]
    counts = Counter(keys)
    weights = np.array([len(items) / (len(counts) * counts[k]) for k in keys], np.float32)
    return weights / weights.mean()


def selection_score(select: str, by_source: dict[str, float], val_loss: float) -> float:
    """Higher is better."""
    if select == "val-loss":
        return -val_loss
    values = [v for v in by_source.values() if not math.isnan(v)]
    if not values:
        return -val_loss
    return min(values) if select == "worst-source" else float(np.mean(values))


def collapsed_sources(groups: dict[str, dict[str, Any]]) -> list[str]:
    """Sources where one answer takes TOP_SHARE_LIMIT or more of the images: the state
    `kedge audit` flags. Such an epoch scores exactly chance in that source, which on a
    small validation split can beat a good epoch that is noisy there, so it is only
    kept when every epoch collapsed."""
    return sorted(k for k, g in groups.items()
                  if g["n"] >= MIN_IMAGES and g["top_answer"]["share"] >= TOP_SHARE_LIMIT)


def epoch_score(select: str, by_source: dict[str, float], collapsed: Sequence[str],
                val_loss: float, unvalidated: Sequence[str] = ()) -> tuple[bool, float]:
    """An epoch's rank, compared as a tuple (higher is better). For the per-source
    choices, first whether no source collapsed to one answer (`collapsed_sources`, every
    source, unvalidated ones included: one answer for a whole source is the cue, not the
    bone), then the score over the validated sources only (an unvalidated source's labels
    cannot validate or refute a model); val-loss stays the plain lowest loss."""
    scored = {k: v for k, v in by_source.items() if k not in unvalidated}
    return select == "val-loss" or not collapsed, selection_score(select, scored, val_loss)


def _three_channels(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[..., None], 3, axis=-1)


def run(model: Any, train_items: Sequence[LabelledImage], val_items: Sequence[LabelledImage],
        classes: Sequence[str], settings: LoopSettings, log: Callable[[str], None] | None = None,
        progress: bool = True, adversary: Adversary | None = None) -> LoopResult:
    """Train `model` (compiled) in place and leave it holding the chosen epoch's weights.
    With `adversary`, its two-headed trainer takes the steps (the source head learns
    from each image's source) and history gains the source head's training accuracy."""
    if settings.balance not in BALANCE or settings.select not in SELECT:
        raise KedgeError(f"balance must be one of {BALANCE}, select one of {SELECT}")
    if not settings.train_unvalidated:
        train_items = [i for i in train_items if i.source not in settings.unvalidated]
    x_train = load_images(train_items, progress, "Loading training images")
    x_val = load_images(val_items, progress, "Loading validation images")
    y_train = np.array([i.label for i in train_items], np.int64)
    y_val = np.array([i.label for i in val_items], np.int64)
    w_train = sample_weights(train_items, settings.balance)
    val_sources = [i.source for i in val_items]
    source_index = {name: k for k, name in enumerate(sorted({i.source for i in train_items}))}
    s_train = np.array([source_index[i.source] for i in train_items], np.int64)
    n, bs = len(train_items), settings.batch_size
    history: dict[str, list[float]] = {k: [] for k in ("loss", "accuracy", "val_loss", "val_accuracy",
                                                      "val_balanced_accuracy", "val_worst_source",
                                                      "val_mean_source")}
    if adversary is not None:
        history.update(source_accuracy=[], reversal=[])
    per_source: list[dict[str, float]] = []
    seconds: list[float] = []
    best_score = (False, -math.inf)
    best_epoch, best_weights, stale = 0, None, 0
    for epoch in range(settings.epochs):
        started = time.perf_counter()
        order = np.random.default_rng([settings.seed, epoch, 1 << 20]).permutation(n)
        losses, hits, total_w, source_hits = 0.0, 0.0, 0.0, 0.0
        if adversary is not None:
            history["reversal"].append(adversary.begin_epoch(epoch, settings.epochs))
        steps = range(0, n, bs)
        bar = tqdm(steps, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", leave=False,
                   disable=None if progress else True)
        for start in bar:
            idx = order[start:start + bs]
            if settings.augment is not None:
                xb = np.stack([augment(x_train[i], image_rng(settings.seed, epoch, int(i)), settings.augment)
                               for i in idx])
            else:
                xb = x_train[idx]
            if adversary is not None:
                loss, acc, source_acc = adversary.step(_three_channels(xb), y_train[idx], s_train[idx], w_train[idx])
                source_hits += source_acc * len(idx)
            else:
                loss, acc = model.train_on_batch(_three_channels(xb), y_train[idx], sample_weight=w_train[idx])
            weight = float(w_train[idx].sum())
            losses, hits, total_w = losses + loss * weight, hits + acc * len(idx), total_w + weight
            bar.set_postfix(loss=f"{losses / total_w:.3f}")
        probs = predict(model, x_val, bs * 2)
        val_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_val)), y_val], 1e-7, 1.0))))
        groups = metrics_by(val_sources, y_val, probs, classes)
        by_source = {k: float(v["balanced_accuracy"]) for k, v in groups.items()}
        overall = metrics_by(["all"] * len(y_val), y_val, probs, classes)["all"]
        collapsed = collapsed_sources(groups)
        score = epoch_score(settings.select, by_source, collapsed, val_loss, settings.unvalidated)
        for key, value in (("loss", losses / total_w), ("accuracy", hits / n), ("val_loss", val_loss),
                           ("val_accuracy", overall["accuracy"]),
                           ("val_balanced_accuracy", overall["balanced_accuracy"]),
                           ("val_worst_source", min(by_source.values())),
                           ("val_mean_source", float(np.mean(list(by_source.values()))))):
            history[key].append(float(value))
        if adversary is not None:
            history["source_accuracy"].append(source_hits / n)
        per_source.append(by_source)
        seconds.append(time.perf_counter() - started)
        improved = score > best_score
        if improved:
            best_score, best_epoch, best_weights, stale = score, epoch + 1, model.get_weights(), 0
        else:
            stale += 1
        if log is not None:
            sources = " ".join(f"{k} {v:.3f}" for k, v in by_source.items())
            log(f"epoch {epoch + 1}/{settings.epochs}: loss {history['loss'][-1]:.4f} "
                f"val_loss {val_loss:.4f} val_acc {overall['accuracy']:.3f} "
                f"val balanced acc by source: {sources}"
                f"{' (one answer for ' + ', '.join(collapsed) + ')' if collapsed else ''}"
                f"{f' source head {source_hits / n:.3f}' if adversary is not None else ''}"
                f" ({seconds[-1]:.1f} s){' *' if improved else ''}")
        if settings.patience and stale >= settings.patience:
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    return LoopResult(history, per_source, best_epoch, seconds)


def predict(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities for grey images (N, 224, 224), in batches."""
    outputs = [np.asarray(model(_three_channels(x[i:i + batch_size]), training=False))
               for i in range(0, len(x), batch_size)]
    return np.concatenate(outputs).astype(np.float32) if outputs else np.zeros((0, 0), np.float32)
