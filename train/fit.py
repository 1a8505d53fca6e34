"""`kedge train`: prepare data, build, fit, evaluate on the test split, write a bundle.

The bundle is assembled in a staging folder and renamed into place at the end, so an
interrupted run never leaves a half-written bundle under the requested name.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import kedge
from kedge.runtime.bundle.manifest import (
    INTENDED_USE,
    atomic_write_text,
    check_output_folder,
    new_bundle,
    portable_path,
    staged_folder,
)
from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.preprocess import INPUT_SHAPE, INTERPOLATION, PREPROCESS_VERSION
from kedge.runtime.inputs.sources import SourceSpec, mix_warnings
from kedge.runtime.reports.evaluate import format_report, predict_items, score
from kedge.train import data as datamod
from kedge.train import loop, plots
from kedge.train.adversary import Adversary
from kedge.train.augment import AugmentSettings
from kedge.train.models import build_model, get_architecture, parameter_counts
from kedge.train.tfkeras import keras, tensorflow, training_device


@dataclass
class TrainSettings:
    model: str
    data: Path
    out: Path
    classes: list[str] | None = None  # default: the architecture's classes
    epochs: int | None = None  # default: the paper's
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    patience: int = 10  # early stopping on validation loss; 0 turns it off
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    augment: bool = True
    source_augment: bool = True  # JPEG, resolution, blur/noise and exposure changes that erase the source
    sources: SourceSpec = field(default_factory=SourceSpec)
    balance: str | None = None  # default: "source-class" with sources, else "class" with --class-weights, else none
    select: str | None = None  # default: "mean-source" with sources, else "val-loss"
    unvalidated_sources: tuple[str, ...] = ()  # in val/test and the collapse guard, not in the selection score
    train_unvalidated: bool = True  # False: the unvalidated sources' images are not trained on either
    adversary: float = 0.0  # domain-adversarial source head's reversal weight; 0 = off (train/adversary.py)
    label_smoothing: float = 0.0  # 0.1 spreads 10 % of each label's mass over the classes (noisy labels)
    class_weights: bool = False  # same as balance="class" (kept for the earlier option)
    mixed_precision: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    progress: bool = True
    score_test: bool = True  # False for recipe search: the test split is read once, by the final run


def _loss(k: Any, tf: Any, n_classes: int, smoothing: float) -> Any:
    """Cross-entropy on integer labels, with optional label smoothing (which Keras offers
    only for one-hot labels, so the labels are one-hot encoded here)."""
    if not smoothing:
        return "sparse_categorical_crossentropy"
    categorical = k.losses.CategoricalCrossentropy(label_smoothing=smoothing)

    def smoothed_cross_entropy(y_true: Any, y_pred: Any) -> Any:
        return categorical(tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), n_classes), y_pred)

    return smoothed_cross_entropy


def train(settings: TrainSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one model and write its bundle; returns the manifest."""
    arch = get_architecture(settings.model)
    classes = settings.classes or list(arch.classes)
    epochs = settings.epochs or arch.epochs
    if settings.batch_size < 1 or epochs < 1 or settings.lr <= 0:
        raise KedgeError("--batch-size and --epochs must be at least 1, and --lr positive")
    if settings.adversary < 0:
        raise KedgeError(f"--adversary {settings.adversary}: give a weight >= 0 (0 turns the head off)")
    if not 0 <= settings.label_smoothing < 1:
        raise KedgeError(f"--label-smoothing {settings.label_smoothing}: give a value in [0, 1)")
    # Output and data are checked before TensorFlow loads: their errors come fast and without TF's noise.
    check_output_folder(settings.out, settings.overwrite)
    prepared = datamod.prepare(settings.data, classes, settings.fractions, settings.seed, settings.progress,
                               settings.sources)
    with_sources = len(prepared.sources) > 1
    if settings.adversary and not with_sources:
        raise KedgeError(f"--adversary {settings.adversary}: the source head needs --sources or --source-rule "
                         f"that name at least two sources (found {len(prepared.sources)})")
    unknown = sorted(set(settings.unvalidated_sources) - set(prepared.sources))
    if unknown:
        raise KedgeError(f"--unvalidated-source {', '.join(unknown)}: no such source "
                         f"(the sources are {', '.join(sorted(prepared.sources)) or 'none'})")
    if not settings.train_unvalidated and not settings.unvalidated_sources:
        raise KedgeError("--no-train-unvalidated needs --unvalidated-source NAME")
    balance = settings.balance or ("source-class" if with_sources else "class" if settings.class_weights else "none")
    select = settings.select or ("mean-source" if with_sources else "val-loss")
    counts = prepared.summary()["counts"]
    for split in datamod.SPLITS:
        missing = [c for c in classes if not counts[split].get(c)]
        if missing:
            raise KedgeError(f"{settings.data}: the {split} split has no {', '.join(missing)} image; "
                             "add images or change the split fractions")
    _log_data(prepared, log)
    log(f"sources: {settings.sources.describe()}; loss weights: {balance}; checkpoint chosen by: {select}"
        + (f" over the validated sources (not {', '.join(settings.unvalidated_sources)}"
           f"{', not trained on either' if not settings.train_unvalidated else ''})"
           if settings.unvalidated_sources else ""))

    k, tf = keras(), tensorflow()
    device = training_device()
    log(f"kedge train {arch.name}: {len(classes)} classes ({', '.join(classes)}), device {device}")
    if settings.mixed_precision and device.startswith("CPU"):
        log("note: mixed precision on a CPU is slower than float32; it pays on a GPU with tensor cores")

    with staged_folder(settings.out, overwrite=settings.overwrite) as stage:
        k.utils.set_random_seed(settings.seed)
        tf.config.experimental.enable_op_determinism()
        k.mixed_precision.set_global_policy("mixed_float16" if settings.mixed_precision else "float32")
        try:
            model = build_model(arch.name, len(classes), **settings.model_options)
        finally:
            k.mixed_precision.set_global_policy("float32")
        optimizer = k.optimizers.Adam(settings.lr)
        if settings.mixed_precision:  # float16 gradients need loss scaling against underflow
            optimizer = k.mixed_precision.LossScaleOptimizer(optimizer)
        class_loss = _loss(k, tf, len(classes), settings.label_smoothing)
        model.compile(optimizer=optimizer, loss=class_loss, metrics=["accuracy"])
        adversary = Adversary(model, len(prepared.sources), settings.adversary, optimizer, class_loss) \
            if settings.adversary else None
        augment = AugmentSettings(geometry=True, source_erasing=settings.source_augment) if settings.augment else None
        loop_settings = loop.LoopSettings(epochs=epochs, batch_size=settings.batch_size, seed=settings.seed,
                                          patience=settings.patience, balance=balance, select=select,
                                          unvalidated=tuple(settings.unvalidated_sources),
                                          train_unvalidated=settings.train_unvalidated, augment=augment)
        result = loop.run(model, prepared.items("train"), prepared.items("val"), classes, loop_settings,
                          log=log if settings.progress else None, progress=settings.progress, adversary=adversary)
        history, best_epoch = result.history, result.best_epoch
        fit_seconds = float(sum(result.seconds))
        log(f"trained {len(history['loss'])} epochs in {fit_seconds:.0f} s "
            f"({np.mean(result.seconds):.1f} s/epoch); kept epoch {best_epoch} (best {select} on validation)")

        predict = lambda x: model(x, training=False).numpy()  # noqa: E731
        scored = "test" if settings.score_test else "val"
        test_report = score(predict_items(predict, prepared.items(scored), progress=settings.progress), classes)
        log(format_report(test_report, f"{scored} split (n={test_report['n']}), Keras"))

        model.save(stage / "model.keras")
        datamod.write_split_manifest(stage / "split.csv", prepared)
        _write_history(stage / "history.csv", history, result.seconds, result.val_by_source)
        plots.plot_history(history, best_epoch, stage / "curves.png", f"{arch.name} training",
                           result.val_by_source if with_sources else None)
        plots.plot_confusion(test_report["confusion_matrix"], classes, stage / "confusion_matrix.png",
                             f"{arch.name}, {scored} split (n={test_report['n']})")
        options = {**arch.options, **settings.model_options}
        if options.get("weights") not in (None, "imagenet", "none"):  # a .h5 file of this machine
            options["weights"] = portable_path(options["weights"])
        sources = settings.sources.to_json()
        if sources["file"]:  # kedge.json names no folder of this machine (see portable_path)
            sources["file"] = portable_path(sources["file"], settings.data)
        for failure in test_report["failures"]:
            failure["path"] = portable_path(failure["path"], settings.data)
        manifest = new_bundle(stage, {
            "kedge_version": kedge.__version__,
            "model": {"name": arch.name, "architecture": arch.name, "classes": classes, "paper": arch.paper,
                      "options": options, "parameters": parameter_counts(model)},
            "input": {"name": "image", "shape": [None, *INPUT_SHAPE], "layout": "NHWC", "dtype": "float32",
                      "range": [0.0, 1.0]},
            "preprocessing": {"version": PREPROCESS_VERSION, "interpolation": INTERPOLATION},
            "artifacts": {"keras": "model.keras", "split_manifest": "split.csv", "history": "history.csv",
                          "curves": "curves.png", "confusion_matrix": "confusion_matrix.png"},
            "training": {
                **{key: value for key, value in asdict(settings).items()
                   if key not in ("out", "progress", "overwrite", "model_options", "data", "sources", "score_test")},
                "data": portable_path(settings.data), "classes": classes, "epochs": epochs,
                "epochs_run": len(history["loss"]),
                "sources": sources, "balance": balance, "select": select,
                "best_epoch": best_epoch, "seconds": round(fit_seconds, 1),
                "seconds_per_epoch": round(float(np.mean(result.seconds)), 2), "device": device,
                "tensorflow": tf.__version__, "keras": f"tf_keras {k.__version__}",
                "optimizer": "Adam", "loss": "categorical cross-entropy" + (
                    f", label smoothing {settings.label_smoothing}" if settings.label_smoothing else ""),
                "dataset": {**prepared.summary(), "root": portable_path(prepared.root)},
            },
            "metrics": {scored: test_report},
            "intended_use": INTENDED_USE,
        }).manifest
    log(f"bundle written: {settings.out}")
    return manifest


def _write_history(path: Path, history: dict[str, list[float]], seconds: list[float],
                   by_source: list[dict[str, float]]) -> None:
    keys = list(history)
    sources = sorted(by_source[0]) if by_source else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", *keys, *(f"val_balanced_accuracy[{s}]" for s in sources), "seconds"])
    for i in range(len(history["loss"])):
        writer.writerow([i + 1, *(f"{history[key][i]:.6f}" for key in keys),
                         *(f"{by_source[i][s]:.6f}" for s in sources), f"{seconds[i]:.2f}"])
    atomic_write_text(path, buffer.getvalue())


def _log_data(prepared: datamod.PreparedData, log: Callable[[str], None]) -> None:
    summary = prepared.summary()
    parts = [f"{split} {sum(summary['counts'][split].values())}" for split in datamod.SPLITS]
    log(f"data: {', '.join(parts)} images in {summary['groups']} radiographs")
    for reason, count in summary["excluded"].items():
        log(f"  excluded {count}: {reason}")
    mix = summary["counts_by_source"]["train"]
    if len(mix) > 1:
        for source, row in mix.items():
            log(f"  train source {source}: " + ", ".join(f"{c} {n}" for c, n in row.items()))
        for warning in mix_warnings(mix):
            log(f"  warning: {warning}")
    for entry in prepared.entries:
        if entry.note.startswith("unreadable"):
            log(f"  skipped {entry.item.path}: {entry.note.split(': ', 1)[1]}")
