"""The Keras original as a backend: parity's reference wherever TensorFlow is installed.

It is registered from here, the training side, through the `kedge.references` entry
point (setup.cfg), so the runtime lists and opens it like any backend, importing
kedge.train only when it is named. It is a reference, not a checked pair: parity compares the exported forms
against it, and `auto` never picks it; `--backend keras` (explain, audit, bench) runs it
by name.
"""
from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.backends.base import Backend, Session
from kedge.runtime.bundle.forms import Form
from kedge.runtime.bundle.manifest import Bundle, sha256_file
from kedge.runtime.errors import KedgeError

KERAS = Form("keras", "fp32", "model.keras", "keras", "the Keras original (tf_keras)", format="keras")


def keras_available() -> bool:
    """tf_keras importable (checked without importing TensorFlow)."""
    return find_spec("tf_keras") is not None


class KerasSession(Session):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        from kedge.train.models import load_keras_model

        self.model: Any = load_keras_model(path)
        self.name = "keras (tf_keras, CPU/GPU as TensorFlow chooses)"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(batch, training=False))

    def close(self) -> None:
        self.model = None


def has_keras(bundle: Bundle) -> bool:
    """The bundle lists its model.keras, or was shipped without it and has it back beside it."""
    left_out = bundle.left_out.get(str(KERAS.artifact))
    beside = left_out is not None and (bundle.path / left_out["file"]).is_file()
    return bundle.has(str(KERAS.artifact)) or beside


def keras_file(bundle: Bundle) -> Path:
    """The bundle's model.keras; for a shipped bundle, the one it was shipped without, put
    back beside it (checked against the sha256 the shipped manifest kept)."""
    left_out = bundle.left_out.get(str(KERAS.artifact))
    if bundle.has(str(KERAS.artifact)) or not left_out:
        return Path(bundle.file(str(KERAS.artifact)))
    path = bundle.path / left_out["file"]
    if not path.is_file():
        raise KedgeError(f"{bundle.path}: {left_out['file']} was left out when this bundle was shipped; put the one "
                         f"it was shipped from (sha256 {str(left_out['sha256'])[:12]}) beside kedge.json to use it "
                         "as the reference")
    if sha256_file(path) != left_out["sha256"]:
        raise KedgeError(f"{path}: not the model.keras this bundle was shipped from (sha256 differs)")
    return path


class Keras(Backend):
    """The plug-in: the bundle's model.keras in tf_keras, on whatever device TensorFlow picks."""

    name, device, own_forms = "keras", "cpu or gpu (TensorFlow's choice)", (KERAS,)
    title = "Keras"
    checked, reference = False, True

    @classmethod
    def problem(cls) -> str | None:
        return None if keras_available() else "needs TensorFlow (the [train] extra)"  # not imported: it takes seconds

    @classmethod
    def forms_in(cls, bundle: Bundle) -> list[Form]:
        return [KERAS] if has_keras(bundle) else []

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import version

        return f"tf_keras {version('tf_keras')}"

    @classmethod
    def describe(cls, info: dict[str, Any] | None) -> str:
        if info and info.get("version"):
            return f"{info['version']} (the parity reference; auto never runs it)"
        return "not installed (the [train] extra; only the parity reference needs it)"

    @property
    def label(self) -> str:
        return "keras"  # the original has one form: its name says what ran

    @property
    def model(self) -> Any:
        """The loaded tf_keras model (Grad-CAM needs its gradients)."""
        self.activate()
        assert isinstance(self.session, KerasSession)
        return self.session.model

    def standing(self) -> str:
        return "the Keras original, parity's reference (no check applies to it)"

    def locate(self) -> Path:
        return keras_file(self.bundle)

    def open(self) -> Session:
        return KerasSession(self.locate())
