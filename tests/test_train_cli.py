"""`kedge train` and `kedge evaluate` end to end on synthetic data, through the CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from kedge.cli import main
from kedge.runtime.bundle.manifest import load_bundle, sha256_file
from kedge.runtime.inputs.preprocess import PREPROCESS_VERSION

pytestmark = pytest.mark.tensorflow


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cnn_bundle(tf_keras, synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "cnn"
    result = run("train", "knee-cnn", "--data", synthetic_data, "--out", out, "--width", "0.125",
                 "--epochs", "8", "--patience", "0", "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_bundle_contents(cnn_bundle, synthetic_data) -> None:
    bundle = load_bundle(cnn_bundle)
    m = bundle.manifest
    assert sorted(p.name for p in cnn_bundle.iterdir()) == [
        "confusion_matrix.png", "curves.png", "history.csv", "kedge.json", "model.keras", "split.csv"]
    assert m["model"]["classes"] == ["Normal", "Osteopenia", "Osteoporosis"]
    assert m["input"]["shape"] == [None, 224, 224, 3] and m["preprocessing"]["version"] == PREPROCESS_VERSION
    assert m["intended_use"] == "Research use only, not a diagnostic device."
    assert m["training"]["device"].startswith(("CPU", "GPU"))
    assert m["training"]["epochs_run"] == 8 and m["training"]["lr"] == 1e-3 and m["training"]["batch_size"] == 16
    assert all(sha256_file(cnn_bundle / name) == digest for name, digest in m["files"].items())
    assert len(m["files"]) == 5
    history = (cnn_bundle / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy") and len(history) == 9
    assert (cnn_bundle / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_learns_the_synthetic_task(cnn_bundle) -> None:
    test = load_bundle(cnn_bundle).manifest["metrics"]["test"]
    assert test["n"] == 27  # 15 % of 60 per class, three classes
    assert test["accuracy"] > 0.6  # chance is 1/3
    low, high = test["accuracy_ci95"]
    assert low < test["accuracy"] < high


def test_evaluate_test_split_reproduces_training_metrics(cnn_bundle, synthetic_data) -> None:
    result = run("evaluate", cnn_bundle, "--data", synthetic_data, "--split", "test", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    stored = load_bundle(cnn_bundle).manifest["metrics"]["test"]
    assert report["n"] == stored["n"] and report["confusion_matrix"] == stored["confusion_matrix"]
    assert report["by_format"]["png"]["n"] == 27


def test_evaluate_reports_bad_file_and_exits_nonzero(cnn_bundle, synthetic_data, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    (data / "Normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    result = run("evaluate", cnn_bundle, "--data", data, "--quiet")
    assert result.exit_code == 1
    assert "broken.png: truncated or corrupt image header" in result.output
    assert "n=180" in result.output  # every other image was still scored


def test_binary_resnet50_gru_with_class_subset(tf_keras, synthetic_data, tmp_path) -> None:
    out = tmp_path / "gru"
    result = run("train", "resnet50-gru", "--data", synthetic_data, "--out", out, "--classes",
                 "normal,OSTEOPOROSIS", "--width", "0.125", "--gru-units", "16", "--epochs", "1", "--quiet")
    assert result.exit_code == 0, result.output
    manifest = load_bundle(out).manifest
    assert manifest["model"]["classes"] == ["normal", "OSTEOPOROSIS"]
    assert manifest["model"]["options"]["gru_units"] == 16
    assert manifest["training"]["dataset"]["counts"]["test"] == {"normal": 9, "OSTEOPOROSIS": 9}


def test_interrupted_training_leaves_no_bundle(tf_keras, synthetic_data, tmp_path, monkeypatch) -> None:
    from kedge.train import plots

    def fail(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_history", fail)
    result = CliRunner().invoke(main, ["train", "knee-cnn", "--data", str(synthetic_data), "--out",
                                       str(tmp_path / "cnn"), "--width", "0.0625", "--epochs", "1", "--quiet"])
    assert result.exit_code == 130 and "kedge: interrupted" in result.output
    assert list(tmp_path.iterdir()) == []


def test_wrong_option_for_model(tf_keras, synthetic_data, tmp_path) -> None:
    result = CliRunner().invoke(main, ["train", "knee-cnn", "--data", str(synthetic_data), "--out",
                                       str(tmp_path / "x"), "--gru-units", "8"])
    assert result.exit_code == 1 and "knee-cnn has no option --gru-units" in result.output


def test_mixed_precision_option(tf_keras, synthetic_data, tmp_path) -> None:
    from kedge.train.models import load_keras_model

    out = tmp_path / "mp"
    result = run("train", "knee-cnn", "--data", synthetic_data, "--out", out, "--width", "0.0625", "--epochs", "1",
                 "--mixed-precision")
    assert result.exit_code == 0, result.output
    assert "epoch 1/1: loss " in result.output  # not a terminal: one log line per epoch instead of a bar
    assert load_bundle(out).manifest["training"]["mixed_precision"] is True
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # global state restored
    model = load_keras_model(out / "model.keras")
    assert model.get_layer("conv1").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"  # softmax stays float32
    import numpy as np

    assert model(np.zeros((1, 224, 224, 3), np.float32)).dtype == "float32"


def test_label_smoothing_and_class_weights(tf_keras, synthetic_data, tmp_path) -> None:
    from dataclasses import replace

    from kedge.runtime.inputs.folders import scan_labelled
    from kedge.train.loop import sample_weights

    classes = ["Normal", "Osteopenia", "Osteoporosis"]
    scanned = scan_labelled(synthetic_data, classes)
    items = [i for i in scanned if i.class_name == "Normal"][:40] + [i for i in scanned
                                                                     if i.class_name == "Osteopenia"][:10]
    weights = sample_weights(items, "class")  # 40 Normal, 10 Osteopenia: each class weighs 25 in all
    assert weights[:40].sum() == pytest.approx(25) and weights[40:].sum() == pytest.approx(25)
    # per (source, class): source x holds 30 Normal + 10 Osteopenia, source y 10 Normal
    sourced = [replace(i, source="x" if n < 30 or i.class_name == "Osteopenia" else "y") for n, i in enumerate(items)]
    cells = sample_weights(sourced, "source-class")
    assert cells[:30].sum() == pytest.approx(cells[30:40].sum()) == pytest.approx(cells[40:].sum())
    assert sample_weights(items, "none").tolist() == [1.0] * 50
    out = tmp_path / "smoothed"
    result = run("train", "knee-cnn", "--data", synthetic_data, "--out", out, "--width", "0.125", "--epochs", "2",
                 "--label-smoothing", "0.1", "--class-weights", "--quiet")
    assert result.exit_code == 0, result.output
    training = load_bundle(out).manifest["training"]
    assert training["label_smoothing"] == 0.1 and training["class_weights"] is True
    assert training["loss"] == "categorical cross-entropy, label smoothing 0.1"
    bad = CliRunner().invoke(main, ["train", "knee-cnn", "--data", str(synthetic_data), "--out", str(tmp_path / "x"),
                                    "--label-smoothing", "1.5"])
    assert bad.exit_code == 1 and "--label-smoothing 1.5: give a value in [0, 1)" in bad.output


def test_same_seed_same_weights(tf_keras, synthetic_data, tmp_path) -> None:
    """Op determinism plus seeded data order and augmentation: one seed, one machine, one
    set of weights; another seed gives others."""
    import numpy as np

    from kedge.train.models import load_keras_model

    def weights(seed: int, name: str) -> list:
        out = tmp_path / name
        result = run("train", "knee-cnn", "--data", synthetic_data, "--out", out, "--width", "0.0625",
                     "--epochs", "2", "--patience", "0", "--seed", str(seed), "--quiet")
        assert result.exit_code == 0, result.output
        return load_keras_model(out / "model.keras").get_weights()

    first, second, other = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(np.array_equal(a, c) for a, c in zip(first, other, strict=True))


def test_an_epoch_that_gives_one_answer_to_a_source_is_not_kept() -> None:
    """Worst-source selection once kept collapsed epochs: all-one-answer scores exactly
    chance in every source, which beats a good epoch that is noisy in one small source."""
    from kedge.runtime.reports.metrics import metrics_by
    from kedge.train.loop import collapsed_sources, epoch_score

    classes = ["Normal", "Osteopenia", "Osteoporosis"]

    def rank(select, sources, y, probs, val_loss=1.0):
        groups = metrics_by(sources, y, probs, classes)
        by_source = {k: float(v["balanced_accuracy"]) for k, v in groups.items()}
        return epoch_score(select, by_source, collapsed_sources(groups), val_loss)

    sources = ["a"] * 6 + ["b"] * 6
    y = np.array([0, 1, 2, 0, 1, 2] * 2)
    one_answer = np.eye(3, dtype=np.float32)[[1] * 12]  # balanced accuracy 1/3 in both sources
    # source a right on 2 of 6 (1/3 - noisy), source b right on all: worst source 1/3 too, but no collapse;
    # a slightly worse worst source (1/6) still ranks above the collapsed epoch
    spread = np.eye(3, dtype=np.float32)[[0, 1, 0, 1, 0, 0] + [0, 1, 2, 0, 1, 2]]
    worse = np.eye(3, dtype=np.float32)[[0, 2, 1, 2, 0, 0] + [0, 1, 2, 0, 1, 2]]
    collapsed = rank("worst-source", sources, y, one_answer)
    assert collapsed == (False, pytest.approx(1 / 3))
    assert rank("worst-source", sources, y, worse) > collapsed
    assert rank("worst-source", sources, y, spread) > collapsed
    # a source with fewer than five images is too small to call collapsed
    assert rank("mean-source", ["a"] * 4, y[:4], one_answer[:4])[0] is True
    # val-loss stays the plain lowest loss (the naive choice the planted-cue audit test needs)
    assert rank("val-loss", sources, y, one_answer, val_loss=0.5) == (True, -0.5)


def test_an_unvalidated_source_is_left_out_of_the_score_but_not_out_of_the_collapse_guard() -> None:
    """Collection A's labels are no target: an epoch must not be chosen for doing well on
    them, yet one answer for all of A is still the source cue and still ranks last."""
    from kedge.train.loop import epoch_score

    good_on_a = {"A": 0.9, "B": 0.5, "C": 0.6}
    good_on_b = {"A": 0.2, "B": 0.7, "C": 0.6}
    assert epoch_score("worst-source", good_on_a, [], 1.0) > epoch_score("worst-source", good_on_b, [], 1.0)
    assert epoch_score("worst-source", good_on_a, [], 1.0, ["A"]) == (True, pytest.approx(0.5))
    assert epoch_score("worst-source", good_on_b, [], 1.0, ["A"]) > \
        epoch_score("worst-source", good_on_a, [], 1.0, ["A"])
    assert epoch_score("mean-source", good_on_b, ["A"], 1.0, ["A"]) == (False, pytest.approx(0.65))


def test_unvalidated_source_options_are_checked_before_training(tmp_path) -> None:
    from click.testing import CliRunner

    from kedge.cli import main
    from kedge.runtime.checks.synthetic import write_dataset

    data = tmp_path / "data"
    write_dataset(data, per_class=4, seed=0)
    result = CliRunner().invoke(main, ["train", "knee-cnn", "--data", str(data), "--out", str(tmp_path / "b"),
                                       "--source-rule", "format", "--unvalidated-source", "Z"])
    assert result.exit_code == 1 and "--unvalidated-source Z: no such source" in result.output
    assert not (tmp_path / "b").exists()
