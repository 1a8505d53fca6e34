"""What the export steps import beyond the lean runtime, and whether this machine has it.

Asked before any work, so a missing extra is one line naming it (pip install
'kedge[export]'), not an ImportError deep in a step. The parity reference asks too:
Keras is the reference only where TensorFlow is installed.
"""
from __future__ import annotations

import importlib.util

from kedge.runtime.errors import KedgeError

# What each step imports beyond the lean runtime, and the extra that brings it.
STEP_NEEDS = {"--fp16": (("onnx", "onnxconverter_common", "onnxruntime"), "export"),
              "--int8": (("onnx", "onnxruntime"), "export")}


def tensorflow_available() -> bool:
    """tf_keras and tf2onnx are installed: Keras can be converted, and be the parity reference."""
    return all(importable(m) for m in ("tf_keras", "tf2onnx"))


def require(step: str) -> None:
    """One line saying which extra a step needs, before any work, instead of an ImportError later."""
    modules, extra = STEP_NEEDS[step]
    missing = [m for m in modules if not importable(m)]
    if missing:
        names = ", ".join(m.replace("_", "-") for m in missing)
        raise KedgeError(f"{step} needs {names}: pip install 'kedge[{extra}]'")


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
