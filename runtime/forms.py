"""The forms a bundle can hold, how to open each one as a backend, and which one to use.

A form is one exported file run by one backend: `onnx-fp32`, `onnx-fp16`,
`onnx-int8` (uint8 activations, the fast one on CPUs), `onnx-int8-qdq` (the
symmetric Q/DQ file TensorRT builds from, run here by ONNX Runtime), and the
TensorRT engines `trt-fp32`, `trt-fp16`, `trt-int8` where TensorRT and a GPU are
present. Parity, benchmarks and inference all name forms the same way, and
`choose_form` is the one place that turns `--backend`/`--precision` into a form.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kedge.runtime.backends.base import Backend
from kedge.runtime.bundle import Bundle
from kedge.runtime.errors import KedgeError

BACKENDS = ("auto", "tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Form:
    name: str
    precision: str  # fp32, fp16 or int8: what the parity thresholds depend on
    artifact: str | None  # the manifest artifact key of an ONNX form; None for engines
    description: str

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.artifact else "tensorrt"


ONNX_FORMS = (
    Form("onnx-fp32", "fp32", "onnx_fp32", "FP32 ONNX on ONNX Runtime"),
    Form("onnx-fp16", "fp16", "onnx_fp16", "FP16 ONNX (FP32 I/O) on ONNX Runtime"),
    Form("onnx-int8", "int8", "onnx_int8_cpu", "INT8 Q/DQ, uint8 activations, for CPUs, on ONNX Runtime"),
    Form("onnx-int8-qdq", "int8", "onnx_int8_qdq", "INT8 Q/DQ, symmetric (TensorRT's form), on ONNX Runtime"),
)
ENGINE_FORMS = tuple(Form(f"trt-{p}", p, None, f"TensorRT {p.upper()} engine") for p in PRECISIONS)
ALL_FORMS = {f.name: f for f in (*ONNX_FORMS, *ENGINE_FORMS)}


def form(name: str) -> Form:
    spec = ALL_FORMS.get(name)
    if spec is None:
        raise KedgeError(f"unknown form {name!r}: choose from {', '.join(ALL_FORMS)}")
    return spec


def tensorrt_usable() -> bool:
    """TensorRT and pycuda importable and a CUDA GPU visible (all needed to run an engine)."""
    from importlib.util import find_spec

    from kedge.runtime.backends.tensorrt import tensorrt_module
    from kedge.runtime.cuda import has_gpu

    try:
        tensorrt_module()
    except KedgeError:
        return False
    return find_spec("pycuda") is not None and has_gpu()


def bundle_engines(bundle: Bundle, precision: str) -> list[Path]:
    """The bundle's engine files of one precision, whatever they were built for."""
    from kedge.runtime.engines import read_sidecar

    paths = [bundle.path / rel for rel in bundle.manifest.get("engines", {}).values()]
    found = []
    for path in paths:
        try:
            if path.is_file() and read_sidecar(path).precision == precision:
                found.append(path)
        except KedgeError:
            continue
    return found


def engine_path(bundle: Bundle, precision: str) -> Path | None:
    """This machine's engine of `precision`, checked against its sidecar (TensorRT version,
    GPU, source ONNX sha256). None when the bundle has no engine of that precision; a
    one-line KedgeError saying what differs when it has one but not for this machine."""
    from kedge.runtime.backends.tensorrt import tensorrt_module
    from kedge.runtime.cuda import device
    from kedge.runtime.engines import check_compatible, engine_file_name, read_sidecar

    candidates = bundle_engines(bundle, precision)
    if not candidates:
        return None
    trt = tensorrt_module()
    capability = device().compute_capability
    wanted = engine_file_name(bundle.name, precision, trt.__version__, capability)
    path = next((p for p in candidates if p.name == wanted), candidates[0])
    info = read_sidecar(path)
    check_compatible(path, info, trt.__version__, capability, _onnx_sha256(bundle, info.source_onnx))
    return path


def _onnx_sha256(bundle: Bundle, relative: str) -> str | None:
    return bundle.manifest.get("files", {}).get(relative)


def available_forms(bundle: Bundle) -> list[Form]:
    """The forms this bundle holds that this machine can run."""
    artifacts = bundle.manifest.get("artifacts", {})
    forms = [f for f in ONNX_FORMS if f.artifact in artifacts]
    if bundle.manifest.get("engines") and tensorrt_usable():
        for spec in ENGINE_FORMS:
            try:
                if engine_path(bundle, spec.precision) is not None:
                    forms.append(spec)
            except KedgeError:
                continue  # an engine for another machine: not runnable here
    return forms


def open_form(bundle: Bundle, spec: str | Form, threads: int | None = None, device: str = "auto",
              cuda_graph: bool = False) -> Backend:
    """Load one form as a backend (the caller closes it, or uses it in a `with`).

    `threads` and `device` (auto|cpu|cuda) apply to ONNX Runtime; `cuda_graph` to engines."""
    spec = form(spec) if isinstance(spec, str) else spec
    if spec.artifact is not None:
        from kedge.runtime.backends.onnxruntime import OnnxRuntimeBackend, choose_providers

        return OnnxRuntimeBackend(bundle.file(spec.artifact), choose_providers(device), threads, label=spec.name)
    from kedge.runtime.backends.tensorrt import TensorRTBackend
    from kedge.runtime.engines import read_sidecar

    path = engine_path(bundle, spec.precision)
    if path is None:
        flag = "" if spec.precision == "fp32" else f" --{spec.precision}"
        raise KedgeError(f"{bundle.path}: no {spec.precision} engine; build one on this device with "
                         f"`kedge export {bundle.path} --engine{flag}`")
    return TensorRTBackend(path, _onnx_sha256(bundle, read_sidecar(path).source_onnx), cuda_graph)


@dataclass(frozen=True)
class Choice:
    form: Form
    reason: str  # one line: why this form, for the user and the audit trail


def choose_form(bundle: Bundle, backend: str = "auto", precision: str | None = None) -> Choice:
    """Turn --backend/--precision into one form of this bundle.

    auto: TensorRT when TensorRT, pycuda, a GPU and an engine of the precision are all
    present; otherwise ONNX Runtime (CUDA if onnxruntime-gpu sees a GPU, else the CPU),
    with INT8 on the CPU when the bundle has it. An engine built for another machine
    is an error that says how to rebuild it, never a silent fallback."""
    if backend not in BACKENDS:
        raise KedgeError(f"--backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if precision is not None and precision not in PRECISIONS:
        raise KedgeError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    why = ""
    if backend in ("auto", "tensorrt"):
        engine = _engine_choice(bundle, precision, required=backend == "tensorrt")
        if engine is not None:
            return engine
        why = "no TensorRT engine for this device: " if tensorrt_usable() else "no TensorRT and GPU here: "
    return _onnx_choice(bundle, precision, why)


def _engine_choice(bundle: Bundle, precision: str | None, required: bool) -> Choice | None:
    if not tensorrt_usable():
        if required:
            raise KedgeError("--backend tensorrt: needs TensorRT, pycuda and a visible NVIDIA GPU "
                             "(see `kedge info`)")
        return None
    order = [precision] if precision else ["int8", "fp16", "fp32"]
    for wanted in order:
        if engine_path(bundle, wanted) is not None:  # raises on an engine built for another machine
            why = "requested" if precision else "the fastest engine this bundle has"
            return Choice(form(f"trt-{wanted}"), f"TensorRT {wanted} engine ({why})")
    if required:
        what = f"{precision} engine" if precision else "engine"
        hint = f" --{precision}" if precision and precision != "fp32" else ""
        raise KedgeError(f"{bundle.path}: no {what} for this device; build one with "
                         f"`kedge export {bundle.path} --engine{hint}`")
    return None


def _onnx_choice(bundle: Bundle, precision: str | None, prefix: str) -> Choice:
    from kedge.runtime.backends.onnxruntime import CUDA, choose_providers

    artifacts = bundle.manifest.get("artifacts", {})
    on_cuda = choose_providers("auto")[0] == CUDA
    where = "ONNX Runtime on CUDA" if on_cuda else "ONNX Runtime on the CPU"
    if precision is None:
        preferred = ["onnx-fp16", "onnx-fp32"] if on_cuda else ["onnx-int8", "onnx-fp32"]
        for name in preferred:
            if form(name).artifact in artifacts:
                return Choice(form(name), f"{prefix}{where}, {form(name).precision} (the default there)")
        raise KedgeError(f"{bundle.path}: no ONNX form; run `kedge export {bundle.path}` first")
    names = {"fp32": ["onnx-fp32"], "fp16": ["onnx-fp16"], "int8": ["onnx-int8", "onnx-int8-qdq"]}[precision]
    for name in names:
        if form(name).artifact in artifacts:
            return Choice(form(name), f"{prefix}{where}, {precision} (requested)")
    flag = {"fp32": "", "fp16": " --fp16", "int8": " --int8 --calib DIR"}[precision]
    raise KedgeError(f"{bundle.path}: no {precision} ONNX form; make it with `kedge export {bundle.path}{flag}`")
