"""The one table of forms a bundle can hold.

A form is one file: an exported ONNX (`onnx-fp32`, `onnx-fp16`, `onnx-int8` with
uint8 activations for CPUs, `onnx-int8-qdq` in TensorRT's symmetric layout) or a
TensorRT engine built here from one of them (`trt-fp32`, `trt-fp16`, `trt-int8`).
Export file names, the ONNX each engine is built from, parity rows, benchmark rows
and the `auto` choice all read this table. Which backends run a form is declared by
the backends themselves (their `forms`), so a new backend needs no edit here; the
(backend, form, precision) pairs this machine can run are the registry's
(`kedge.runtime.backends.runnable_pairs`). This module imports nothing of the runtime
but its errors, so every other part of it may read the table.
"""
from __future__ import annotations

from dataclasses import dataclass

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
