"""`kedge train`: prepare data, build, fit, evaluate on the test split, write a bundle.

The bundle is assembled in a staging folder and renamed into place at the end, so an
interrupted run never leaves a half-written bundle under the requested name.
"""
from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import kedge
from kedge.runtime.bundle import (
    INTENDED_USE,
    atomic_write_text,
    check_output_folder,
    staged_folder,
    write_manifest,
)
from kedge.runtime.errors import KedgeError
from kedge.runtime.evaluate import predict_items, score
from kedge.runtime.preprocess import INPUT_SHAPE, INTERPOLATION, PREPROCESS_VERSION
from kedge.train import data as datamod
from kedge.train import plots
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
    label_smoothing: float = 0.0  # 0.1 spreads 10 % of each label's mass over the classes (noisy labels)
    class_weights: bool = False  # weight each class's loss by n / (classes x n_class) of the training split
    mixed_precision: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    progress: bool = True


def _loss(k: Any, tf: Any, n_classes: int, smoothing: float) -> Any:
    """Cross-entropy on integer labels, with optional label smoothing (which Keras offers
    only for one-hot labels, so the labels are one-hot encoded here)."""
    if not smoothing:
        return "sparse_categorical_crossentropy"
    categorical = k.losses.CategoricalCrossentropy(label_smoothing=smoothing)

    def smoothed_cross_entropy(y_true: Any, y_pred: Any) -> Any:
        return categorical(tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), n_classes), y_pred)

    return smoothed_cross_entropy


def _class_weights(items: Any, classes: list[str]) -> dict[int, float]:
    """Balanced weights, n / (classes x n_class), from the training split's counts."""
    counts = np.bincount([classes.index(i.class_name) for i in items], minlength=len(classes))
    return {i: float(counts.sum() / (len(classes) * c)) for i, c in enumerate(counts) if c}


def train(settings: TrainSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one model and write its bundle; returns the manifest."""
    arch = get_architecture(settings.model)
    classes = settings.classes or list(arch.classes)
    epochs = settings.epochs or arch.epochs
    if settings.batch_size < 1 or epochs < 1 or settings.lr <= 0:
        raise KedgeError("--batch-size and --epochs must be at least 1, and --lr positive")
    if not 0 <= settings.label_smoothing < 1:
        raise KedgeError(f"--label-smoothing {settings.label_smoothing}: give a value in [0, 1)")
    # Output and data are checked before TensorFlow loads: their errors come fast and without TF's noise.
    check_output_folder(settings.out, settings.overwrite)
    prepared = datamod.prepare(settings.data, classes, settings.fractions, settings.seed, settings.progress)
    counts = prepared.summary()["counts"]
    for split in datamod.SPLITS:
        missing = [c for c in classes if not counts[split].get(c)]  # type: ignore[index]
        if missing:
            raise KedgeError(f"{settings.data}: the {split} split has no {', '.join(missing)} image; "
                             "add images or change the split fractions")
    _log_data(prepared, log)

    k, tf = keras(), tensorflow()
    device = training_device()
    log(f"kedge train {arch.name}: {len(classes)} classes ({', '.join(classes)}), device {device}")
    if settings.mixed_precision and device.startswith("CPU"):
        log("note: mixed precision on a CPU is slower than float32; it pays on a GPU with tensor cores")

    with staged_folder(settings.out, overwrite=settings.overwrite) as stage:
        k.utils.set_random_seed(settings.seed)
        k.mixed_precision.set_global_policy("mixed_float16" if settings.mixed_precision else "float32")
        try:
            model = build_model(arch.name, len(classes), **settings.model_options)
        finally:
            k.mixed_precision.set_global_policy("float32")
        optimizer = k.optimizers.Adam(settings.lr)
        if settings.mixed_precision:  # float16 gradients need loss scaling against underflow
            optimizer = k.mixed_precision.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss=_loss(k, tf, len(classes), settings.label_smoothing),
                      metrics=["accuracy"])
        weights = _class_weights(prepared.items("train"), classes) if settings.class_weights else None
        if weights:
            log("class weights: " + ", ".join(f"{classes[i]} {w:.2f}" for i, w in weights.items()))
        train_ds = datamod.tf_dataset(prepared.items("train"), settings.batch_size, training=True,
                                      seed=settings.seed, augment=settings.augment)
        val_ds = datamod.tf_dataset(prepared.items("val"), settings.batch_size, training=False, seed=settings.seed)
        best_weights = stage / ".best.weights.h5"
        timer = _epoch_timer(k)
        callbacks = [timer, k.callbacks.ModelCheckpoint(str(best_weights), monitor="val_loss",
                                                        save_best_only=True, save_weights_only=True)]
        if settings.patience > 0:
            callbacks.append(k.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience))
        if settings.progress and sys.stderr.isatty():
            from tqdm.keras import TqdmCallback

            callbacks.append(TqdmCallback(verbose=1))
        elif settings.progress:  # a log file or pipe: one line per epoch reads better than redrawn bars
            timer.log = log
        started = time.perf_counter()
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=0,
                            class_weight=weights).history
        fit_seconds = time.perf_counter() - started
        best_epoch = int(np.argmin(history["val_loss"])) + 1
        model.load_weights(str(best_weights))
        best_weights.unlink()
        log(f"trained {len(history['loss'])} epochs in {fit_seconds:.0f} s "
            f"({np.mean(timer.seconds):.1f} s/epoch); kept epoch {best_epoch} (lowest validation loss)")

        predict = lambda x: model(x, training=False).numpy()  # noqa: E731
        test_report = score(predict_items(predict, prepared.items("test"), progress=settings.progress), classes)
        log(f"test split: accuracy {test_report['accuracy']:.3f} "
            f"(95% CI {test_report['accuracy_ci95'][0]:.3f}-{test_report['accuracy_ci95'][1]:.3f}, "
            f"n={test_report['n']}), macro-F1 {test_report['macro_f1']:.3f}")

        model.save(stage / "model.keras")
        datamod.write_split_manifest(stage / "split.csv", prepared)
        _write_history(stage / "history.csv", history, timer.seconds)
        plots.plot_history(history, best_epoch, stage / "curves.png", f"{arch.name} training")
        plots.plot_confusion(test_report["confusion_matrix"], classes, stage / "confusion_matrix.png",
                             f"{arch.name}, test split (n={test_report['n']})")
        options = {**arch.options, **settings.model_options}
        manifest = write_manifest(stage, {
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
                   if key not in ("out", "progress", "overwrite", "model_options", "data")},
                "data": str(settings.data), "classes": classes, "epochs": epochs, "epochs_run": len(history["loss"]),
                "best_epoch": best_epoch, "seconds": round(fit_seconds, 1),
                "seconds_per_epoch": round(float(np.mean(timer.seconds)), 2), "device": device,
                "tensorflow": tf.__version__, "keras": f"tf_keras {k.__version__}",
                "optimizer": "Adam", "loss": "categorical cross-entropy" + (
                    f", label smoothing {settings.label_smoothing}" if settings.label_smoothing else ""),
                "dataset": prepared.summary(),
            },
            "metrics": {"test": test_report},
            "intended_use": INTENDED_USE,
        })
    log(f"bundle written: {settings.out}")
    return manifest


def _epoch_timer(k: Any) -> Any:
    """A Keras callback recording wall time per epoch (the class needs Keras, so it is built here)."""

    class EpochTimer(k.callbacks.Callback):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.log: Callable[[str], None] | None = None

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.perf_counter() - self._start)
            if self.log is not None:
                values = " ".join(f"{key} {value:.4f}" for key, value in (logs or {}).items())
                self.log(f"epoch {epoch + 1}/{self.params.get('epochs', '?')}: {values} ({self.seconds[-1]:.1f} s)")

    return EpochTimer()


def _write_history(path: Path, history: dict[str, list[float]], seconds: list[float]) -> None:
    keys = list(history)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", *keys, "seconds"])
    for i in range(len(history["loss"])):
        writer.writerow([i + 1, *(f"{history[key][i]:.6f}" for key in keys), f"{seconds[i]:.2f}"])
    atomic_write_text(path, buffer.getvalue())


def _log_data(prepared: datamod.PreparedData, log: Callable[[str], None]) -> None:
    summary = prepared.summary()
    parts = [f"{split} {sum(summary['counts'][split].values())}" for split in datamod.SPLITS]  # type: ignore[index]
    log(f"data: {', '.join(parts)} images in {summary['groups']} radiographs")
    for reason, count in summary["excluded"].items():  # type: ignore[union-attr]
        log(f"  excluded {count}: {reason}")
    for entry in prepared.entries:
        if entry.note.startswith("unreadable"):
            log(f"  skipped {entry.item.path}: {entry.note.split(': ', 1)[1]}")
