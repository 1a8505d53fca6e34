"""`kedge audit` on a planted source cue (tests/cuegen.py): a model trained without the
cue removal must be flagged, one trained with kedge's recipe must not be. Both
trainings are real (a small knee-cnn); the first run *is* the check that the audit can
fail."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from cuegen import AUDIT_COUNTS, CLASSES, TRAIN_COUNTS, write_cue_set

from kedge.cli import main
from kedge.runtime.reports.shortcut import cross_validated_accuracy, cue_test, flags

EPOCHS = 15


@pytest.fixture(scope="module")
def cue_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cue")
    return write_cue_set(root / "train", TRAIN_COUNTS, bone_follows_label=False, seed=1), \
        write_cue_set(root / "audit", AUDIT_COUNTS, bone_follows_label=True, seed=2)


def _train(tmp_path, data, *extra: str):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["train", "knee-cnn", "--data", str(data), "--out", str(out), "--classes",
                                       ",".join(CLASSES), "--width", "0.125", "--epochs", str(EPOCHS),
                                       "--patience", "0", "--source-rule", "folder", "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return out


def _audit(bundle, data):
    result = CliRunner().invoke(main, ["audit", str(bundle), "--data", str(data), "--source-rule", "folder",
                                       "--backend", "keras", "--json", "--quiet"])
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.tensorflow
def test_model_that_learnt_the_cue_is_flagged(tf_keras, cue_data, tmp_path) -> None:
    train, audit_set = cue_data
    bundle = _train(tmp_path, train, "--balance", "none", "--select", "val-loss", "--no-source-augment")
    code, report = _audit(bundle, audit_set)
    assert code == 1
    clinic = report["by_source"]["clinic"]
    assert clinic["top_answer"] == {**clinic["top_answer"], "class": "Osteoporosis"}
    assert clinic["top_answer"]["share"] >= 0.9
    assert any(f.startswith("source clinic") for f in report["flags"])


@pytest.mark.tensorflow
def test_model_trained_with_the_recipe_passes(tf_keras, cue_data, tmp_path) -> None:
    train, audit_set = cue_data
    bundle = _train(tmp_path, train)  # sources given: source-class weights, source-erasing, mean-source
    manifest = json.loads((bundle / "kedge.json").read_text())
    assert (manifest["training"]["balance"], manifest["training"]["select"]) == ("source-class", "mean-source")
    code, report = _audit(bundle, audit_set)
    assert code == 0, report["flags"]
    assert report["flags"] == []
    for row in report["by_source"].values():
        assert row["balanced_accuracy"] >= 0.75


def test_cue_test_flags_answers_that_follow_the_source() -> None:
    rng = np.random.default_rng(0)
    sources = ["a"] * 60 + ["b"] * 60
    labels = rng.integers(0, 2, 120)  # classes mixed the same way in both sources
    honest = np.eye(2)[labels] * 0.8 + 0.1
    shortcut = np.eye(2)[[0] * 60 + [1] * 60] * 0.8 + 0.1  # answers by source
    assert not cue_test(honest, labels, sources, 2)["flagged"]
    found = cue_test(shortcut, labels, sources, 2)
    assert found["flagged"] and found["from_answers"] > 0.95
    assert "cue test" in flags({}, found)[0]
    assert cue_test(honest, labels, ["a"] * 120, 2) is None  # one source: nothing to test


def test_cross_validated_accuracy_is_near_chance_on_noise() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    assert cross_validated_accuracy(rng.normal(size=(200, 3)), y) < 0.62
    assert cross_validated_accuracy(np.eye(2)[y] + rng.normal(0, 0.1, (200, 2)), y) > 0.95


@pytest.mark.tensorflow
def test_gradient_reversal_flips_and_scales_the_gradient(tf_keras) -> None:
    import tensorflow as tf

    from kedge.train.adversary import gradient_reversal_layer, ramp

    layer = gradient_reversal_layer()()
    layer.strength.assign(0.7)
    x = tf.Variable([[1.0, -2.0, 3.0]])
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(y * tf.constant([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(y.numpy(), x.numpy())  # identity forwards
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [[-0.7, -1.4, -2.1]], rtol=1e-6)
    assert ramp(0, 10) == 0.0 and 0.99 < ramp(9, 10) <= 1.0 and ramp(3, 10) > ramp(2, 10)


@pytest.mark.tensorflow
def test_adversarial_head_trains_but_does_not_ship(tf_keras, cue_data, tmp_path) -> None:
    """--adversary trains a source head beside the class head; the bundle's model is the
    plain class model, and history shows the source head and the reversal ramp."""
    import csv

    from kedge.train.adversary import ramp
    from kedge.train.models import load_keras_model

    train, _ = cue_data
    out = tmp_path / "adv"
    result = CliRunner().invoke(main, ["train", "knee-cnn", "--data", str(train), "--out", str(out), "--classes",
                                       ",".join(CLASSES), "--width", "0.125", "--epochs", "3", "--patience", "0",
                                       "--source-rule", "folder", "--adversary", "0.5", "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "kedge.json").read_text())
    assert manifest["training"]["adversary"] == 0.5
    model = load_keras_model(out / "model.keras")
    assert len(model.outputs) == 1 and model.output_shape == (None, len(CLASSES))
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [float(r["reversal"]) for r in rows] == pytest.approx([0.5 * ramp(e, 3) for e in range(3)], abs=1e-6)
    assert all(0.0 <= float(r["source_accuracy"]) <= 1.0 for r in rows)


def test_adversary_needs_two_sources(synthetic_data, tmp_path) -> None:
    result = CliRunner().invoke(main, ["train", "knee-cnn", "--data", str(synthetic_data), "--out",
                                       str(tmp_path / "x"), "--adversary", "0.3"])
    assert result.exit_code == 1
    assert "--adversary 0.3" in result.output and "two sources" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()
