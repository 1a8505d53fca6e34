"""Parity with the Keras original where TensorFlow is installed (the runtime's parity
uses the FP32 ONNX as its reference when it is not)."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kedge.export import needs
from kedge.runtime.bundle import Bundle
from kedge.runtime.errors import KedgeError
from kedge.runtime.parity import Candidate


def parity_for_bundle(
    bundle: Bundle,
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
    from kedge.runtime.parity import bundle_parity

    opener = reference_candidate(bundle, reference)
    if log:
        log(f"parity: reference {opener.form}, data {data}{f' ({split} split)' if split else ''}")
    return bundle_parity(bundle, data, split, opener, forms, batch_size, progress, backends=backends)


def reference_candidate(bundle: Bundle, reference: str | None = None) -> Candidate:
    """The parity reference of a bundle, not yet opened: `keras` (its form is 'keras') or the
    FP32 ONNX on ONNX Runtime. Default: keras where TensorFlow and the bundle's model.keras
    (or, for a shipped bundle, the one put back beside it) are here. Parity, the golden set
    and the INT8 tools all score against this one reference."""
    from kedge.runtime.parity import onnx_reference

    if reference not in (None, "keras", "onnx-fp32"):
        raise KedgeError(f"--reference {reference}: choose keras or onnx-fp32 (which falls back to the float form "
                         "onnx-fp16 where a shipped bundle has no FP32 file)")
    chosen = reference or ("keras" if needs.tensorflow_available() and has_keras(bundle) else "onnx-fp32")
    if chosen == "onnx-fp32":
        return onnx_reference(bundle)
    if not needs.tensorflow_available():
        raise KedgeError("--reference keras needs TensorFlow (the [train] extra); use --reference onnx-fp32")
    from kedge.train.backend import KerasBackend

    keras_path = keras_file(bundle)
    return Candidate("keras", "keras", "fp32", lambda: KerasBackend(keras_path))


def has_keras(bundle: Bundle) -> bool:
    """The bundle lists its model.keras, or was shipped without it and has it back beside it."""
    left_out = bundle.left_out.get("keras")
    beside = left_out is not None and (bundle.path / left_out["file"]).is_file()
    return bundle.has("keras") or beside


def keras_file(bundle: Bundle) -> Path:
    """The bundle's model.keras; for a shipped bundle, the one it was shipped without, put
    back beside it (checked against the sha256 the shipped manifest kept)."""
    from kedge.runtime.bundle import sha256_file

    left_out = bundle.left_out.get("keras")
    if bundle.has("keras") or not left_out:
        return Path(bundle.file("keras"))
    path = bundle.path / left_out["file"]
    if not path.is_file():
        raise KedgeError(f"{bundle.path}: {left_out['file']} was left out when this bundle was shipped; put the one "
                         f"it was shipped from (sha256 {str(left_out['sha256'])[:12]}) beside kedge.json to use it "
                         "as the reference")
    if sha256_file(path) != left_out["sha256"]:
        raise KedgeError(f"{path}: not the model.keras this bundle was shipped from (sha256 differs)")
    return path
