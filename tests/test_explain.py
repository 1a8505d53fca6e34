"""Occlusion maps (`kedge explain`) on a model whose evidence is known: a bright
synthetic lesion at a known place must be where the map peaks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from leanbundle import lesion_onnx

LESION_YX = (150, 60)
LESION_RADIUS = 14


def lesion_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    grey = np.clip(0.45 + rng.normal(0, 0.04, (224, 224)), 0, 1)
    yy, xx = np.mgrid[:224, :224]
    grey[(yy - LESION_YX[0]) ** 2 + (xx - LESION_YX[1]) ** 2 <= LESION_RADIUS ** 2] = 1.0
    return np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)


@pytest.fixture(scope="module")
def lesion_bundle(tmp_path_factory) -> Path:
    from kedge.runtime.bundle.manifest import new_bundle

    folder = tmp_path_factory.mktemp("lesion") / "lesion"
    folder.mkdir()
    lesion_onnx(folder / "model.onnx")
    new_bundle(folder, {"model": {"name": "lesion", "architecture": "test", "classes": ["clear", "lesion"]},
                            "artifacts": {"onnx_fp32": "model.onnx"}})
    return folder


def test_occlusion_peaks_on_the_lesion(lesion_bundle) -> None:
    from kedge.runtime.backends import pair
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.reports.explain import occlusion

    with pair("onnxruntime", "onnx-fp32").open(load_bundle(lesion_bundle)) as backend:
        result = occlusion(backend, lesion_image(), patch=24, stride=8)
    assert result.class_index == 1 and result.probability > 0.9
    peak = np.unravel_index(np.argmax(result.heatmap), result.heatmap.shape)
    assert np.hypot(peak[0] - LESION_YX[0], peak[1] - LESION_YX[1]) <= LESION_RADIUS
    far = result.heatmap[:80, 120:]  # background far from the lesion: hiding it changes nothing
    assert np.abs(far).max() < 0.01 * result.heatmap.max()


def test_explain_cli_writes_a_png(lesion_bundle, tmp_path) -> None:
    image = tmp_path / "lesion.png"
    cv2.imwrite(str(image), np.round(lesion_image()[:, :, 0] * 255).astype(np.uint8))
    out = tmp_path / "map.png"  # a hand-made model with no labelled data for parity: run it as unverified
    result = subprocess.run([sys.executable, "-m", "kedge.cli", "explain", str(image), "--model",
                             str(lesion_bundle), "--out", str(out), "--json", "--backend", "onnxruntime",
                             "--allow-unverified"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["class"] == "lesion" and row["png"] == str(out) and out.read_bytes().startswith(b"\x89PNG")
    assert np.hypot(row["peak_yx"][0] - LESION_YX[0], row["peak_yx"][1] - LESION_YX[1]) <= LESION_RADIUS
    bad = subprocess.run([sys.executable, "-m", "kedge.cli", "explain", str(image), "--model", str(lesion_bundle),
                          "--class", "Normal"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "--class 'Normal': lesion has clear, lesion" in bad.stderr


def test_grad_cam_and_occlusion_agree_on_the_lesion(tf_keras) -> None:
    """The same known-evidence model in Keras: Grad-CAM and occlusion (run on Keras) both
    find the lesion, and their maps agree."""
    from kedge.runtime.reports.explain import occlusion
    from kedge.train.backend import KerasSession
    from kedge.train.gradcam import grad_cam

    k = tf_keras
    inputs = k.Input((224, 224, 3), name="image")
    grey = k.layers.Conv2D(1, 1, activation="relu", name="bright")(inputs)
    pooled = k.layers.GlobalAveragePooling2D()(grey)
    outputs = k.layers.Dense(2, activation="softmax", name="probabilities")(pooled)
    model = k.Model(inputs, outputs)
    model.get_layer("bright").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32), np.array([-0.8], np.float32)])
    model.get_layer("probabilities").set_weights([np.array([[-2000.0, 2000.0]], np.float32),
                                                  np.array([0.0, -2.0], np.float32)])
    image = lesion_image()
    cam, index, probability = grad_cam(model, image)
    assert index == 1 and probability > 0.9
    session = KerasSession.__new__(KerasSession)  # wrap the in-memory model; the session normally loads a file
    session.model, session.name = model, "keras"
    occluded = occlusion(session, image, patch=24, stride=8).heatmap
    for heatmap in (cam, occluded):
        peak = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        assert np.hypot(peak[0] - LESION_YX[0], peak[1] - LESION_YX[1]) <= LESION_RADIUS
    assert np.corrcoef(cam.ravel(), occluded.ravel())[0, 1] > 0.5
