"""The one table of forms a bundle can hold, and the (backend, form, precision) pairs
this machine can run from them.

A form is one file: an exported ONNX (`onnx-fp32`, `onnx-fp16`, `onnx-int8` with
uint8 activations for CPUs, `onnx-int8-qdq` in TensorRT's symmetric layout) or a
TensorRT engine built here from one of them (`trt-fp32`, `trt-fp16`, `trt-int8`).
Export file names, the ONNX each engine is built from, parity rows, benchmark rows
and the `auto` choice all read this table. Which backends run a form is declared by
the backends themselves (their `forms`), so a new backend needs no edit here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedge.runtime.backends import backend_class, names
from kedge.runtime.backends.base import Backend
from kedge.runtime.bundle import Bundle
from kedge.runtime.errors import KedgeError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Form:
    name: str
    precision: str  # of the file: fp32, fp16 or int8
    file: str  # the file name export writes (engines: a pattern, see runtime/engines.py)
    artifact: str | None  # the manifest artifact key of an ONNX form; None for engines
    description: str
    built_from: tuple[str, ...] = ()  # engines: the ONNX forms TensorRT builds them from, preferred first


FORMS: dict[str, Form] = {f.name: f for f in (
    Form("onnx-fp32", "fp32", "model.onnx", "onnx_fp32", "FP32 ONNX"),
    Form("onnx-fp16", "fp16", "model.fp16.onnx", "onnx_fp16", "FP16 ONNX (FP32 I/O)"),
    Form("onnx-int8", "int8", "model.int8.cpu.onnx", "onnx_int8_cpu", "INT8 Q/DQ ONNX, uint8 activations, for CPUs"),
    Form("onnx-int8-qdq", "int8", "model.int8.qdq.onnx", "onnx_int8_qdq", "INT8 Q/DQ ONNX, symmetric (TensorRT's)"),
    Form("trt-fp32", "fp32", "{model}.fp32.trt{trt}.sm{sm}.engine", None, "TensorRT FP32 engine", ("onnx-fp32",)),
    Form("trt-fp16", "fp16", "{model}.fp16.trt{trt}.sm{sm}.engine", None, "TensorRT FP16 engine",
         ("onnx-fp16", "onnx-fp32")),
    Form("trt-int8", "int8", "{model}.int8.trt{trt}.sm{sm}.engine", None, "TensorRT INT8 engine",
         ("onnx-int8-qdq", "onnx-fp32")),
)}
ONNX_FORMS = tuple(f for f in FORMS.values() if f.artifact is not None)


def form(name: str) -> Form:
    spec = FORMS.get(name)
    if spec is None:
        raise KedgeError(f"unknown form {name!r}: choose from {', '.join(FORMS)}")
    return spec


def form_of_artifact(key: str) -> Form | None:
    return next((f for f in ONNX_FORMS if f.artifact == key), None)


def backends_for(spec: Form) -> list[str]:
    """Registered backends that declare they run `spec` (whether or not usable here)."""
    return [n for n in names() if spec.name in backend_class(n).forms]


@dataclass(frozen=True)
class Pair:
    """What runs: a backend, a form of the bundle, and the precision it runs at."""

    backend: str
    form: Form
    precision: str

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.form.name}/{self.precision}"

    def __str__(self) -> str:
        return f"{self.backend} {self.form.name} {self.precision}"

    def identity(self, bundle: Bundle) -> str:
        """What identifies the bytes this pair runs: the sha256 kedge.json records for an ONNX
        form; for an engine, its file name and the sha256 of the ONNX it was built from."""
        if self.form.artifact is not None:
            relative = bundle.manifest.get("artifacts", {}).get(self.form.artifact, "")
            return str(bundle.manifest.get("files", {}).get(relative, relative))
        from kedge.runtime.engines import read_sidecar

        path = Path(self.open(bundle).locate())
        return f"{path.name}:{read_sidecar(path).source_onnx_sha256}"

    def open(self, bundle: Bundle, threads: int | None = None, **options: Any) -> Backend:
        """The backend for this pair, not yet loaded (use it in a `with`, or `activate()`)."""
        return backend_class(self.backend)(bundle, self.form, self.precision, threads, **options)


def pair(backend: str, form_name: str, precision: str | None = None) -> Pair:
    spec = form(form_name)
    return Pair(backend, spec, precision or spec.precision)


def has_form(bundle: Bundle, spec: Form) -> bool:
    """The bundle holds this form's file (ONNX: listed in artifacts; engines: one runs here)."""
    if spec.artifact is not None:
        return spec.artifact in bundle.manifest.get("artifacts", {})
    from kedge.runtime.engines import engine_path, tensorrt_usable

    if not bundle.manifest.get("engines") or not tensorrt_usable():
        return False
    try:
        return engine_path(bundle, spec.precision) is not None
    except KedgeError:
        return False  # an engine for another machine: not runnable here


def runnable_pairs(bundle: Bundle, backends: list[str] | None = None) -> list[Pair]:
    """Every (backend, form, precision) this machine can run from the forms the bundle holds."""
    pairs: list[Pair] = []
    held = [f for f in FORMS.values() if has_form(bundle, f)]
    for name in backends or names():
        cls = backend_class(name)
        if cls.problem() is not None:
            continue
        for spec in held:
            if spec.name in cls.forms:
                pairs.extend(Pair(name, spec, p) for p in cls.precisions(spec))
    return pairs


def usable_backends() -> dict[str, str | None]:
    """Each registered backend and why it cannot run here (None: it can)."""
    return {name: backend_class(name).problem() for name in names()}
