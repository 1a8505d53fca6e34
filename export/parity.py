"""Parity with the Keras original where TensorFlow is installed (the runtime's parity
uses the FP32 ONNX as its reference when it is not)."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
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
    backends: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run parity, choosing the reference: `keras` or `onnx-fp32` (default: keras if TensorFlow is
    here and the bundle has its Keras model, else the FP32 ONNX)."""
    from kedge.export.pipeline import tensorflow_available
    from kedge.runtime.bundle import load_bundle
    from kedge.runtime.parity import Candidate, bundle_parity

    if reference not in (None, "keras", "onnx-fp32"):
        raise KedgeError(f"--reference {reference}: choose keras or onnx-fp32")
    has_keras = "keras" in load_bundle(bundle_dir).manifest.get("artifacts", {})
    chosen = reference or ("keras" if tensorflow_available() and has_keras else "onnx-fp32")
    if chosen == "keras" and not tensorflow_available():
        raise KedgeError("--reference keras needs TensorFlow (the [train] extra); use --reference onnx-fp32")
    opener = None
    if chosen == "keras":
        from kedge.train.backend import KerasBackend

        keras_path = keras_file(load_bundle(bundle_dir))
        opener = Candidate("keras", "keras", "fp32", lambda: KerasBackend(keras_path))
    if log:
        log(f"parity: reference {chosen}, data {data}{f' ({split} split)' if split else ''}")
    return bundle_parity(bundle_dir, data, split, opener, forms, batch_size, progress, backends=backends)


def keras_file(bundle: Any) -> Path:
    """The bundle's model.keras; for a shipped bundle, the one it was shipped without, put
    back beside it (checked against the sha256 the shipped manifest kept)."""
    from kedge.runtime.bundle import sha256_file

    left_out = bundle.manifest.get("shipped", {}).get("left_out", {}).get("keras")
    if "keras" in bundle.manifest.get("artifacts", {}) or not left_out:
        return Path(bundle.file("keras"))
    path = bundle.path / left_out["file"]
    if not path.is_file():
        raise KedgeError(f"{bundle.path}: {left_out['file']} was left out when this bundle was shipped; put the one "
                         f"it was shipped from (sha256 {str(left_out['sha256'])[:12]}) beside kedge.json to use it "
                         "as the reference")
    if sha256_file(path) != left_out["sha256"]:
        raise KedgeError(f"{path}: not the model.keras this bundle was shipped from (sha256 differs)")
    return path
