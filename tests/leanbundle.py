"""A small bundle made without TensorFlow, for the runtime tests: a real ONNX graph
(NHWC input, Conv, ReLU, global pooling, Gemm, Softmax; batch axis named `batch`),
calibrated and quantized by kedge's own calibration code on synthetic knees."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ["Normal", "Osteopenia", "Osteoporosis"]


def tiny_onnx(path: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.5, (8, 3, 5, 5)).astype(np.float32)
    gemm_w = rng.normal(0, 2.0, (8, len(CLASSES))).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w"], ["conv"], strides=[4, 4]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "gemm_w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 224, 224, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(CLASSES)])],
        [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(gemm_w, "gemm_w")])
    for i, node in enumerate(graph.node):  # named, as exporters name them: the quantizer excludes nodes by name
        node.name = f"{node.op_type.lower()}_{i}"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def lesion_onnx(path: Path, threshold: float = 0.8) -> Path:
    """Two classes, "clear" and "lesion": p(lesion) grows with the area brighter than
    `threshold`. A model whose evidence is known, to check explanation maps against."""
    from onnx import helper, numpy_helper

    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "grey_w", "grey_b"], ["grey"]),
        helper.make_node("Relu", ["grey"], ["bright"]),
        helper.make_node("GlobalAveragePool", ["bright"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "gemm_w", "gemm_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    weights = [numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "grey_w"),
               numpy_helper.from_array(np.array([-threshold], np.float32), "grey_b"),
               numpy_helper.from_array(np.array([[-2000.0, 2000.0]], np.float32), "gemm_w"),
               numpy_helper.from_array(np.array([0.0, -2.0], np.float32), "gemm_b")]
    return save_image_model(path, "lesion", nodes, weights, 2)


def save_image_model(path: Path, name: str, nodes: list, weights: list, classes: int) -> Path:
    """Save a checked model with kedge's I/O: `image` (batch, 224, 224, 3) in, `probabilities` out."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 224, 224, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_lean_bundle(folder: Path, calibration_images: Path, int8: bool = True, parity: bool = True) -> Path:
    """`parity`: also check every runnable pair against the FP32 ONNX on `calibration_images`
    (all of them, no split) and record the rows, then make the golden set, as `kedge export
    --data` does."""
    from kedge.calibration.images import select_images
    from kedge.calibration.qdq import quantize
    from kedge.calibration.ranges import calibrate
    from kedge.runtime.bundle.manifest import new_bundle

    folder.mkdir(parents=True)
    tiny_onnx(folder / "model.onnx")
    artifacts = {"onnx_fp32": "model.onnx"}
    if int8:
        images = select_images(calibration_images, CLASSES, 30, seed=0)
        ranges, _, _ = calibrate(folder / "model.onnx", images, "minmax", folder / "calibration", progress=False)
        quantize(folder / "model.onnx", ranges, "minmax", "cpu", folder / "model.int8.cpu.onnx")
        artifacts["onnx_int8_cpu"] = "model.int8.cpu.onnx"
    new_bundle(folder, {"kedge_version": "test", "model": {"name": "tiny", "architecture": "tiny",
                                                              "classes": CLASSES},
                            "input": {"name": "image", "shape": [None, 224, 224, 3], "layout": "NHWC"},
                            "artifacts": artifacts})
    if parity:
        from kedge.export.golden import make_golden
        from kedge.runtime.bundle.manifest import load_bundle
        from kedge.runtime.checks.parity import bundle_parity

        bundle_parity(load_bundle(folder), calibration_images, None, progress=False)
        make_golden(load_bundle(folder), count=12)
    return folder
