"""FP16 ONNX with FP32 input and output, for TensorRT 11's strongly typed builds.

TensorRT 11 has no FP16 builder flag: a network runs in FP16 only where the ONNX
says so. onnxconverter-common rewrites the weights and ops to float16 and keeps the
graph's input and output in float32 (Cast at the edges), so the runtime feeds the
same tensors to every form. Ops whose outputs would overflow float16 stay in FP32:
the FP32 model is run on the gate images with every float tensor observed, and any
node whose output comes within OVERFLOW_MARGIN of the float16 maximum is blocked,
along with onnxconverter-common's default block list.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from kedge.calibration.ranges import collect_ranges
from kedge.runtime.bundle.manifest import atomic_path

FP16_MAX = 65504.0
OVERFLOW_MARGIN = 8.0  # block a node whose observed |output| exceeds FP16_MAX / 8 (headroom for unseen images)


def overflow_nodes(model: Any, fp32_path: str | os.PathLike[str], images: np.ndarray) -> list[str]:
    """Names of the nodes whose outputs, on `images`, come too close to the float16 range."""
    ranges = collect_ranges(fp32_path, (images[i : i + 8] for i in range(0, len(images), 8)), "minmax", op_types=[])
    limit = FP16_MAX / OVERFLOW_MARGIN
    risky = set()
    for name, data in ranges.data.items():
        lowest, highest = (float(np.max(np.abs(np.asarray(v)))) for v in data.range_value)
        if max(lowest, highest) > limit:
            risky.add(name)
    return [node.name for node in model.graph.node if risky.intersection(node.output)]


def to_fp16(fp32_path: str | os.PathLike[str], out: str | os.PathLike[str], images: np.ndarray) -> dict[str, Any]:
    """Write the FP16 form of `fp32_path` atomically; returns what was kept in FP32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(os.fspath(fp32_path))
    kept = overflow_nodes(model, fp32_path, images)
    with warnings.catch_warnings():  # "the float32 number 1e-9 will be truncated to 1e-7", once per weight
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=kept)
    onnx.checker.check_model(converted)
    with atomic_path(out) as tmp:
        tmp.write_bytes(converted.SerializeToString())
    return {"io": "float32", "kept_fp32_nodes": kept, "tool": f"onnxconverter-common {_version()}"}


def _version() -> str:
    from importlib.metadata import version

    return version("onnxconverter-common")
