"""Parity with the Keras original where TensorFlow is installed (the runtime's parity
uses the FP32 ONNX as its reference when it is not)."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from kedge.runtime.errors import KedgeError


def parity_for_bundle(
    bundle_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    split: str | None = None,
    reference: str | None = None,
    forms: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run parity, choosing the reference: `keras` or `onnx-fp32` (default: keras if TensorFlow is here)."""
    from kedge.runtime.parity import bundle_parity

    chosen, open_reference = reference_opener(bundle_dir, reference)
    opener = (chosen, open_reference) if chosen == "keras" else None  # bundle_parity opens the FP32 ONNX itself
    if log:
        log(f"parity: reference {chosen}, data {data}{f' ({split} split)' if split else ''}")
    return bundle_parity(bundle_dir, data, split, opener, forms, batch_size, progress)


def reference_opener(bundle_dir: str | os.PathLike[str], reference: str | None = None) -> tuple[str, Callable[[], Any]]:
    """(name, opener) of the parity reference: `keras` or `onnx-fp32` (default: keras if TensorFlow is here)."""
    from kedge.export.pipeline import tensorflow_available
    from kedge.runtime.bundle import load_bundle
    from kedge.runtime.forms import open_form

    if reference not in (None, "keras", "onnx-fp32"):
        raise KedgeError(f"--reference {reference}: choose keras or onnx-fp32")
    chosen = reference or ("keras" if tensorflow_available() else "onnx-fp32")
    if chosen == "keras" and not tensorflow_available():
        raise KedgeError("--reference keras needs TensorFlow (the [train] extra); use --reference onnx-fp32")
    bundle = load_bundle(bundle_dir)
    if chosen == "keras":
        from kedge.train.backend import KerasBackend

        keras_path = bundle.file("keras")
        return "keras", lambda: KerasBackend(keras_path)
    return "onnx-fp32", lambda: open_form(bundle, "onnx-fp32", device="cpu")
