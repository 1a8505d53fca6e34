"""Parity with the Keras original where TensorFlow is installed (the runtime's parity
uses the FP32 ONNX as its reference when it is not): the reference is chosen by
`kedge.runtime.checks.parity.reference_pair`, among the registered backends."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from kedge.runtime.bundle.manifest import Bundle


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
    from kedge.runtime.checks.parity import bundle_parity, reference_pair

    chosen = reference_pair(bundle, reference)
    if log:
        log(f"parity: reference {chosen.form.name}, data {data}{f' ({split} split)' if split else ''}")
    return bundle_parity(bundle, data, split, chosen, forms, batch_size, progress, backends=backends)
