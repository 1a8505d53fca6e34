"""The single place that imports TensorFlow, and the choice of Keras for the project.

kedge builds its models with tf_keras (Keras 2), not Keras 3. Why: with Keras 3
every tf2onnx route turns the GRU into an ONNX Loop, which FP16/INT8 tooling and
TensorRT handle badly; with tf_keras, tf2onnx emits a native ONNX GRU op
(linear_before_reset=1) that converts cleanly (SPEC section 2). Call `keras()`
inside the functions that need it, so importing kedge never imports TensorFlow.

TensorFlow's start-up lines (absl's "All log messages before absl::InitializeLog()",
oneDNN and CUDA stub notes, and `E0000 ... failed call to cuInit` on every machine
without a GPU) are printed straight to fd 2, whatever TF_CPP_MIN_LOG_LEVEL says. They
are captured and dropped while TensorFlow loads and looks for devices; set
TF_CPP_MIN_LOG_LEVEL yourself (e.g. 0) to see them.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.nativeio import native_stderr

INSTALL_HINT = "pip install 'kedge[train]'"


_USER_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ  # the user asked for TensorFlow's own logging


@contextlib.contextmanager
def quiet_start() -> Iterator[None]:
    """Drop what TensorFlow's C++ side prints on fd 2 inside the block (see the module docstring)."""
    if _USER_LOG_LEVEL:
        yield
        return
    with native_stderr():
        yield


def keras() -> ModuleType:
    """Import TensorFlow in legacy-Keras mode and return the tf_keras module."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with quiet_start():
            import tensorflow
            import tf_keras

            tensorflow.config.list_physical_devices("GPU")  # CUDA's probe (cuInit) prints here, once
    except ImportError as err:
        missing = f"{err.name} is missing"
        raise KedgeError(f"this command needs TensorFlow and tf_keras ({missing}): {INSTALL_HINT}") from None
    return tf_keras


def tensorflow() -> ModuleType:
    keras()
    import tensorflow as tf

    return tf


def training_device() -> str:
    """A human name for what TensorFlow will train on, e.g. 'GPU: NVIDIA RTX 4090' or 'CPU'."""
    tf = tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
        return f"GPU: {details.get('device_name', gpus[0].name)}{more}"
    return f"CPU: {_cpu_name()} (no GPU visible to TensorFlow)"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
