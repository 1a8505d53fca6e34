"""The lean side: no TensorFlow on the runtime path, and one-line errors from the CLI."""
from __future__ import annotations

import configparser
import subprocess
import sys

import pytest

from conftest import REPO

BLOCK_TF = "import sys; [sys.modules.__setitem__(m, None) for m in ('tensorflow', 'tf_keras', 'keras')]; "


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_runtime_never_imports_tensorflow() -> None:
    code = (BLOCK_TF + "import pkgutil, importlib, kedge.runtime, kedge.cli, kedge.train.synthetic; "
            "[importlib.import_module('kedge.runtime.' + m.name) for m in pkgutil.iter_modules(kedge.runtime.__path__)]; "
            "import numpy as np; from kedge.runtime.preprocess import preprocess; "
            "print(preprocess(np.zeros(10, np.uint8).tobytes() and __import__('cv2').imencode('.png', np.zeros((9, 9), np.uint8))[1].tobytes()).shape)")
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert "(224, 224, 3)" in result.stdout
    # and without the block, importing the runtime still leaves TensorFlow unloaded
    check = python("import sys, kedge.runtime.preprocess, kedge.runtime.bundle, kedge.runtime.evaluate, kedge.cli; "
                   "print('tensorflow' in sys.modules)")
    assert check.stdout.strip() == "False", check.stderr


def test_help_without_tensorflow() -> None:
    result = python(BLOCK_TF + "from kedge.cli import main; main(['--help'])")
    assert "train" in result.stdout and "evaluate" in result.stdout, result.stderr


def test_base_install_has_no_tensorflow() -> None:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    base = config["options"]["install_requires"].lower()
    assert "tensorflow" not in base and "keras" not in base
    assert "tensorflow" in config["options.extras_require"]["train"]


@pytest.mark.parametrize("args,message", [
    (["evaluate", "{tmp}/nope", "--data", "{tmp}"], "{tmp}/nope: no such bundle folder"),
    (["train", "knee-cnn", "--data", "{tmp}/none", "--out", "{tmp}/o", "--split", "0.5,0.5"],
     "--split '0.5,0.5': give three positive fractions"),
    (["synth", "--out", "{tmp}/s", "--classes", "Normal"], "--classes 'Normal': need at least two classes"),
])
def test_errors_are_one_line_without_traceback(tmp_path, args, message) -> None:
    argv = [a.format(tmp=tmp_path) for a in args]
    result = subprocess.run([sys.executable, "-m", "kedge.cli", *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.startswith(f"kedge: error: {message.format(tmp=tmp_path)}")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_train_bad_data_folder_is_one_line(tmp_path) -> None:
    pytest.importorskip("tf_keras")
    result = subprocess.run([sys.executable, "-m", "kedge.cli", "train", "knee-cnn", "--data", str(tmp_path / "no"),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"kedge: error: {tmp_path / 'no'}: no such data folder"
    assert not (tmp_path / "o").exists()
