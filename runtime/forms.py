"""The forms a bundle can hold, and how to open each one as a backend.

A form is one exported file run by one backend: `onnx-fp32`, `onnx-fp16`,
`onnx-int8` (uint8 activations, the fast one on CPUs), `onnx-int8-qdq` (the
symmetric Q/DQ file TensorRT builds from, run here by ONNX Runtime), and the
TensorRT engines `trt-fp32`, `trt-fp16`, `trt-int8` where TensorRT and a GPU are
present. Parity, benchmarks and inference all name forms the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kedge.runtime.backends.base import Backend
from kedge.runtime.bundle import Bundle
from kedge.runtime.errors import KedgeError


@dataclass(frozen=True)
class Form:
    name: str
    precision: str  # fp32, fp16 or int8: what the parity thresholds depend on
    artifact: str | None  # the manifest artifact key of an ONNX form; None for engines
    description: str


ONNX_FORMS = (
    Form("onnx-fp32", "fp32", "onnx_fp32", "FP32 ONNX on ONNX Runtime"),
    Form("onnx-fp16", "fp16", "onnx_fp16", "FP16 ONNX (FP32 I/O) on ONNX Runtime"),
    Form("onnx-int8", "int8", "onnx_int8_cpu", "INT8 Q/DQ, uint8 activations, for CPUs, on ONNX Runtime"),
    Form("onnx-int8-qdq", "int8", "onnx_int8_qdq", "INT8 Q/DQ, symmetric (TensorRT's form), on ONNX Runtime"),
)
ENGINE_FORMS = tuple(Form(f"trt-{p}", p, None, f"TensorRT {p.upper()} engine") for p in ("fp32", "fp16", "int8"))
ALL_FORMS = {f.name: f for f in (*ONNX_FORMS, *ENGINE_FORMS)}


def engine_path(bundle: Bundle, precision: str) -> Path | None:
    """This machine's engine of `precision` in the bundle, if one was built here (or for an identical setup)."""
    from kedge.runtime.backends.tensorrt import tensorrt_module
    from kedge.runtime.cuda import device
    from kedge.runtime.engines import engine_file_name

    engines = bundle.manifest.get("engines", {})
    if not engines:
        return None
    trt = tensorrt_module()
    name = engine_file_name(bundle.name, precision, trt.__version__, device().compute_capability)
    return bundle.path / engines[name] if name in engines else None


def tensorrt_usable() -> bool:
    """TensorRT importable and a CUDA GPU visible (both needed to run an engine)."""
    from kedge.runtime.backends.tensorrt import tensorrt_module
    from kedge.runtime.cuda import has_gpu

    try:
        tensorrt_module()
    except KedgeError:
        return False
    return has_gpu()


def available_forms(bundle: Bundle) -> list[Form]:
    """The forms this bundle holds that this machine can run."""
    artifacts = bundle.manifest.get("artifacts", {})
    forms = [f for f in ONNX_FORMS if f.artifact in artifacts]
    if bundle.manifest.get("engines") and tensorrt_usable():
        forms += [f for f in ENGINE_FORMS if engine_path(bundle, f.precision) is not None]
    return forms


def open_form(bundle: Bundle, form: str | Form) -> Backend:
    """Load one form as a backend (the caller closes it, or uses it in a `with`)."""
    spec = ALL_FORMS.get(form) if isinstance(form, str) else form
    if spec is None:
        raise KedgeError(f"unknown form {form!r}: choose from {', '.join(ALL_FORMS)}")
    if spec.artifact is not None:
        from kedge.runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(bundle.file(spec.artifact), label=spec.name)
    from kedge.runtime.backends.tensorrt import TensorRTBackend

    path = engine_path(bundle, spec.precision)
    if path is None:
        raise KedgeError(f"{bundle.path}: no {spec.precision} engine for this TensorRT and GPU; build one with "
                         f"`kedge export {bundle.path} --engine --{spec.precision}`")
    return TensorRTBackend(path)
