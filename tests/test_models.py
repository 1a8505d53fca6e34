"""The two architectures: published parameter counts, in-graph normalisation, native ONNX GRU."""
from __future__ import annotations

import numpy as np
import pytest

from kedge.runtime.errors import KedgeError
from kedge.train.models import ARCHITECTURES

pytestmark = pytest.mark.tensorflow


def test_knee_cnn_matches_published_count(tf_keras) -> None:
    from kedge.train.models import build_model, parameter_counts

    model = build_model("knee-cnn")
    assert parameter_counts(model) == {"total": 15_610_499, "trainable": 15_604_099, "non_trainable": 6_400}
    assert ARCHITECTURES["knee-cnn"].parameters == parameter_counts(model)  # what `kedge models` prints
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 3)
    assert model.get_layer("conv1").output_shape == (None, 73, 73, 128)
    assert model.get_layer("pool4").output_shape == (None, 3, 3, 512)


def test_resnet50_gru_counts(tf_keras) -> None:
    from kedge.train.models import build_model, parameter_counts

    # ResNet50 no-top: 23,587,712 (53,120 BatchNorm statistics, as published);
    # GRU(128) on 2048 features, reset_after: 3*(2048*128 + 128*128 + 2*128) = 836,352; Dense: 258.
    model = build_model("resnet50-gru")
    assert parameter_counts(model) == {"total": 24_424_322, "trainable": 24_371_202, "non_trainable": 53_120}
    assert ARCHITECTURES["resnet50-gru"].parameters == parameter_counts(model)  # what `kedge models` prints
    frozen = build_model("resnet50-gru", freeze_backbone=True, gru_units=64)
    head = 3 * (2048 * 64 + 64 * 64 + 2 * 64) + 64 * 2 + 2
    assert parameter_counts(frozen)["trainable"] == head


def test_imagenet_normalisation_is_in_the_graph(tf_keras) -> None:
    from kedge.train.models import imagenet_preprocess_layer

    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    expected = tf_keras.applications.resnet50.preprocess_input(x * 255.0)
    assert np.allclose(imagenet_preprocess_layer()()(x).numpy(), expected, atol=1e-4)


def test_weights_options_fail_clearly(tf_keras, tmp_path) -> None:
    from kedge.train.models import build_model

    with pytest.raises(KedgeError, match="--weights file not found"):
        build_model("resnet50-gru", weights=str(tmp_path / "missing.h5"))
    with pytest.raises(KedgeError, match="needs the full-width ResNet50"):
        build_model("resnet50-gru", weights="imagenet", width=0.25)
    with pytest.raises(KedgeError, match="unknown option"):
        build_model("knee-cnn", gru_units=8)


def test_resnet50_gru_exports_a_native_onnx_gru(tf_keras, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from kedge.export.onnx import keras_to_onnx
    from kedge.train.models import build_model, load_keras_model

    model = build_model("resnet50-gru", width=0.125, gru_units=16)
    model.save(tmp_path / "model.keras")
    reloaded = load_keras_model(tmp_path / "model.keras")  # the custom normalisation layer round-trips
    keras_to_onnx(reloaded, tmp_path / "model.onnx")
    proto = onnx.load(str(tmp_path / "model.onnx"))
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("GRU") == 1 and "Loop" not in ops and "Scan" not in ops
    gru = next(n for n in proto.graph.node if n.op_type == "GRU")
    assert {a.name: a.i for a in gru.attribute}["linear_before_reset"] == 1
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0  # dynamic batch
    x = np.random.default_rng(1).random((3, 224, 224, 3)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"image": x})[0]
    assert np.abs(onnx_out - model(x, training=False).numpy()).max() < 1e-4


def test_backbone_batchnorm_momentum_is_set(tf_keras) -> None:
    from kedge.train.models import build_model

    def momenta(model) -> set[float]:
        backbone = next(layer for layer in model.layers if isinstance(layer, tf_keras.Model))
        return {layer.momentum for layer in backbone.layers if isinstance(layer, tf_keras.layers.BatchNormalization)}

    assert momenta(build_model("resnet50-gru", width=0.125, gru_units=8, bn_momentum=0.8)) == {0.8}
    assert momenta(build_model("resnet50-gru", width=0.125, gru_units=8)) == {0.9}  # not Keras' 0.99


def test_tensorflow_start_up_is_silent(tf_keras) -> None:
    """absl's pre-init lines, oneDNN notes and `E0000 ... cuInit` are dropped for kedge commands."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = ("from kedge.train.tfkeras import keras, training_device; k = keras(); training_device(); "
            "import numpy as np; k.Sequential([k.layers.Dense(2, input_shape=(3,))]).predict(np.zeros((1, 3)), "
            "verbose=0); print('ran')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ran"
    assert result.stderr == ""
