"""The two published architectures (SPEC section 1), built in tf_keras.

- resnet50-gru: ResNet50 feature map (7x7x2048) read as 49 steps into a GRU, then a
  softmax; binary Normal vs Osteoporosis (IJISAE 2024).
- knee-cnn: nine convolutions, each with BatchNorm and ReLU, then two dense layers;
  three classes (2025). At full width it counts exactly 15,610,499 parameters.

`width` below 1 builds the same topology with fewer channels, so CPU tests stay fast;
the full-size models are still what `kedge models` reports and tests count.
ResNet50's ImageNet normalisation is a layer inside the graph, so every exported form
carries it and the runtime feeds all models the same [0, 1] tensor.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.preprocess import INPUT_SHAPE
from kedge.train.tfkeras import keras

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Architecture:
    name: str
    classes: tuple[str, ...]
    paper: str
    epochs: int  # the paper's epoch count, the default for `kedge train`
    build: Callable[..., Any]
    # Parameter counts of the full-size model (default options), kept as data so `kedge models`
    # needs no TensorFlow; tests/test_models.py checks them against the built models.
    parameters: dict[str, int]
    options: dict[str, Any] = field(default_factory=dict)  # defaults of build's keyword options


def build_knee_cnn(
    n_classes: int = 3, *, width: float = 1.0, dropout: float = 0.5, bn_momentum: float = 0.9, **_: Any
) -> Any:
    """Nine conv layers (conv -> BatchNorm -> ReLU), max-pooling, two dense 1024 layers.

    bn_momentum defaults to 0.9 rather than Keras' 0.99: with ~20 steps an epoch on
    these small data sets, 0.99 makes the moving statistics lag for several epochs and
    validation predictions collapse to one class (SPEC section 2).
    """
    k = keras()
    layers = k.layers

    def scaled(n: int) -> int:
        return max(1, round(n * width))

    def conv(x: Any, filters: int, kernel: int, index: int, stride: int = 1, padding: str = "same") -> Any:
        x = layers.Conv2D(scaled(filters), kernel, strides=stride, padding=padding, name=f"conv{index}")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"conv{index}_bn")(x)
        return layers.ReLU(name=f"conv{index}_relu")(x)

    inputs = k.Input(INPUT_SHAPE, name="image")
    x = conv(inputs, 128, 8, 1, stride=3, padding="valid")
    x = conv(x, 256, 5, 2)
    x = layers.MaxPooling2D(3, strides=3, name="pool1")(x)
    x = conv(x, 256, 3, 3)
    x = conv(x, 256, 1, 4)
    x = conv(x, 256, 1, 5)
    x = conv(x, 512, 3, 6)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = conv(x, 512, 3, 7)
    x = conv(x, 512, 3, 8)
    x = layers.MaxPooling2D(2, name="pool3")(x)
    x = conv(x, 512, 3, 9)
    x = layers.MaxPooling2D(2, name="pool4")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = layers.Dense(scaled(1024), activation="relu", name=f"dense{i}")(x)
        x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return k.Model(inputs, outputs, name="knee_cnn")


def build_resnet50_gru(
    n_classes: int = 2,
    *,
    weights: str = "none",
    freeze_backbone: bool = False,
    gru_units: int = 128,
    width: float = 1.0,
    bn_momentum: float = 0.9,
    **_: Any,
) -> Any:
    """ResNet50 (no top) -> 49x2048 sequence -> GRU(gru_units) -> softmax.

    weights: 'imagenet' (Keras downloads them), 'none' (random init), or a path to a
    ResNet50 no-top .h5 file (works offline). A frozen backbone runs its BatchNorm in
    inference mode, as transfer learning needs. bn_momentum replaces Keras' 0.99 in the
    backbone's BatchNorm layers: trained from random init on ~170 images (11 steps an
    epoch), 0.99 left the moving statistics so far behind that validation predictions
    were one class for every input, while training accuracy rose.
    """
    k = keras()
    layers = k.layers
    inputs = k.Input(INPUT_SHAPE, name="image")
    x = imagenet_preprocess_layer()(name="imagenet_preprocess")(inputs)
    backbone = _resnet50_backbone(weights, width)
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = bn_momentum
    backbone.trainable = not freeze_backbone
    features = backbone(x, training=False) if freeze_backbone else backbone(x)
    steps = features.shape[1] * features.shape[2]
    sequence = layers.Reshape((steps, features.shape[3]), name="to_sequence")(features)
    hidden = layers.GRU(gru_units, name="gru")(sequence)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(hidden)
    return k.Model(inputs, outputs, name="resnet50_gru")


def _resnet50_backbone(weights: str, width: float) -> Any:
    k = keras()
    if width != 1.0:
        if weights != "none":
            raise KedgeError(f"--weights {weights} needs the full-width ResNet50 (width 1.0, not {width})")
        return _reduced_resnet50(width)
    if weights == "none":
        source = None
    elif weights == "imagenet":
        source = "imagenet"
    else:
        path = Path(weights)
        if not path.is_file():
            raise KedgeError(f"{path}: --weights file not found (expected ResNet50 no-top weights, .h5)")
        source = str(path)
    try:
        return k.applications.ResNet50(include_top=False, weights=source, input_shape=INPUT_SHAPE)
    except Exception as err:  # noqa: BLE001  (download and h5 errors come in many types)
        if source == "imagenet":
            raise KedgeError(
                f"could not download ImageNet weights for ResNet50 ({type(err).__name__}); without network, "
                "pass --weights PATH to resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, or --weights none"
            ) from None
        raise KedgeError(f"{weights}: cannot load as ResNet50 no-top weights ({err})") from None


def _reduced_resnet50(width: float) -> Any:
    """ResNet50's exact block structure with every channel count scaled by `width`.

    Built with tf_keras' own generic ResNet builder (the one ResNet50 uses), so the
    topology matches the real backbone; only for fast tests.
    """
    from tf_keras.src.applications import resnet

    def stacks(x: Any) -> Any:
        for filters, blocks, stride, name in ((64, 3, 1, "conv2"), (128, 4, 2, "conv3"),
                                             (256, 6, 2, "conv4"), (512, 3, 2, "conv5")):
            x = resnet.stack1(x, max(1, round(filters * width)), blocks, stride1=stride, name=name)
        return x

    return resnet.ResNet(stacks, False, True, model_name="resnet50_reduced", include_top=False,
                         weights=None, input_shape=INPUT_SHAPE)


@functools.cache
def imagenet_preprocess_layer() -> type:
    """The Keras layer class that maps [0, 1] RGB to ResNet50's 'caffe' input.

    Defined lazily (it subclasses a Keras class) and registered, so saved models load.
    """
    k = keras()
    import tensorflow as tf

    @k.saving.register_keras_serializable(package="kedge")
    class ImageNetPreprocess(k.layers.Layer):  # type: ignore[name-defined]
        """x * 255, RGB -> BGR, minus the ImageNet BGR mean (keras.applications 'caffe' mode)."""

        def call(self, inputs: Any) -> Any:
            bgr = inputs[..., ::-1] * 255.0
            return bgr - tf.constant(IMAGENET_BGR_MEAN, dtype=inputs.dtype)

    return ImageNetPreprocess


ARCHITECTURES: dict[str, Architecture] = {
    "resnet50-gru": Architecture(
        name="resnet50-gru",
        classes=("Normal", "Osteoporosis"),
        paper="An Effective Deep Learning Based Model for the Prediction of Osteoporosis "
        "from Knee X-Ray Images (IJISAE 2024)",
        epochs=100,
        build=build_resnet50_gru,
        parameters={"total": 24_424_322, "trainable": 24_371_202, "non_trainable": 53_120},
        options={"weights": "none", "freeze_backbone": False, "gru_units": 128, "width": 1.0, "bn_momentum": 0.9},
    ),
    "knee-cnn": Architecture(
        name="knee-cnn",
        classes=("Normal", "Osteopenia", "Osteoporosis"),
        paper="A convolution neural network model for knee osteoporosis classification using X-ray images (2025)",
        epochs=30,
        build=build_knee_cnn,
        parameters={"total": 15_610_499, "trainable": 15_604_099, "non_trainable": 6_400},
        options={"width": 1.0, "dropout": 0.5, "bn_momentum": 0.9},
    ),
}


def architecture_rows() -> list[dict[str, Any]]:
    """What `kedge models` lists: each architecture's classes, input shape, full-size parameter
    counts, default epochs and options (no model is built, so no TensorFlow is needed)."""
    return [{"name": arch.name, "classes": list(arch.classes), "input_shape": list(INPUT_SHAPE),
             "parameters": arch.parameters, "default_epochs": arch.epochs, "options": arch.options,
             "paper": arch.paper} for arch in ARCHITECTURES.values()]


def format_architectures(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model':<14}{'classes':<36}{'input':<13}{'total':>12}{'trainable':>12}{'non-trainable':>15}"]
    for row in rows:
        p = row["parameters"]
        lines.append(f"{row['name']:<14}{', '.join(row['classes']):<36}{'x'.join(map(str, row['input_shape'])):<13}"
                     f"{p['total']:>12,}{p['trainable']:>12,}{p['non_trainable']:>15,}")
    return "\n".join(lines)


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise KedgeError(f"unknown model {name!r} (choose from: {', '.join(ARCHITECTURES)})") from None


def build_model(name: str, n_classes: int | None = None, **options: Any) -> Any:
    """Build an architecture by name; options override its defaults."""
    arch = get_architecture(name)
    unknown = set(options) - set(arch.options)
    if unknown:
        raise KedgeError(f"{name}: unknown option(s) {', '.join(sorted(unknown))}")
    return arch.build(n_classes or len(arch.classes), **{**arch.options, **options})


def parameter_counts(model: Any) -> dict[str, int]:
    k = keras()
    trainable = sum(k.backend.count_params(w) for w in model.trainable_weights)
    frozen = sum(k.backend.count_params(w) for w in model.non_trainable_weights)
    return {"total": int(trainable + frozen), "trainable": int(trainable), "non_trainable": int(frozen)}


def custom_objects() -> dict[str, type]:
    return {"ImageNetPreprocess": imagenet_preprocess_layer()}


def load_keras_model(path: str | os.PathLike[str]) -> Any:
    k = keras()
    try:
        return k.models.load_model(path, custom_objects=custom_objects(), compile=False)
    except (OSError, ValueError) as err:
        raise KedgeError(f"{path}: cannot load Keras model ({err})") from None
