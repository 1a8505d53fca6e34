"""The one table of forms a bundle can hold.

A form is one file: an exported ONNX (`onnx-fp32`, `onnx-fp16`, `onnx-int8` with
uint8 activations for CPUs, `onnx-int8-qdq` in TensorRT's symmetric layout) or a
TensorRT engine built here from one of them (`trt-fp32`, `trt-fp16`, `trt-int8`).
Export file names, artifact keys, the export options that make each form, the ONNX
each engine is built from, the files check-trt checks, parity rows, benchmark rows
and the `auto` choice all read this table: a new form is one row here plus, for a
form converted from another, its converter (export/pipeline.py runs it). Which
backends run a form is declared by the backends themselves (their `forms`, by name
or by format; `Backend.runs`), so a new backend needs no edit here either; the
(backend, form, precision) pairs this machine can run are the registry's
(`kedge.runtime.backends.runnable_pairs`). This module imports nothing of the runtime
but its errors, so every other part of it may read the table.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kedge.runtime.errors import KedgeError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Form:
    name: str
    precision: str  # of the file: fp32, fp16 or int8
    file: str  # the file name export writes (engines: a pattern, see runtime/bundle/engines.py)
    artifact: str | None  # the manifest artifact key of an ONNX form; None for engines
    description: str
    built_from: tuple[str, ...] = ()  # the forms it is made (ONNX) or built (engines) from, preferred first
    made_by: str = ""  # the `kedge export` options that make it ("": every export that has its source)
    tensorrt: tuple[str, ...] = ()  # TensorRT versions whose engines are built from this file (check-trt checks it)
    format: str = "onnx"  # what a backend reads: "onnx" or "engine" (a backend's `forms` may name a format)
    # Converted forms: what writes it from built_from[0], "module:function" (export side, loaded only
    # when exporting) or the function: (source, target, gate images) -> details kept in kedge.json's
    # exports; and the max |dp| against its source it must keep on the gate images (None: no gate).
    converter: str | Callable[..., dict[str, Any]] | None = None
    gate: float | None = None


FORMS: dict[str, Form] = {f.name: f for f in (
    Form("onnx-fp32", "fp32", "model.onnx", "onnx_fp32", "FP32 ONNX", tensorrt=("10.3", "11")),
    Form("onnx-fp16", "fp16", "model.fp16.onnx", "onnx_fp16", "FP16 ONNX (FP32 I/O)", ("onnx-fp32",), "--fp16",
         ("11",), converter="kedge.export.fp16:to_fp16", gate=1e-2),
    Form("onnx-int8", "int8", "model.int8.cpu.onnx", "onnx_int8_cpu", "INT8 Q/DQ ONNX, uint8 activations, for CPUs",
         ("onnx-fp32",), "--int8 --calib DIR"),
    Form("onnx-int8-qdq", "int8", "model.int8.qdq.onnx", "onnx_int8_qdq", "INT8 Q/DQ ONNX, symmetric (TensorRT's)",
         ("onnx-fp32",), "--int8 --calib DIR", ("10.3", "11")),
    Form("trt-fp32", "fp32", "{model}.fp32.trt{trt}.sm{sm}.engine", None, "TensorRT FP32 engine", ("onnx-fp32",),
         "--engine", format="engine"),
    Form("trt-fp16", "fp16", "{model}.fp16.trt{trt}.sm{sm}.engine", None, "TensorRT FP16 engine",
         ("onnx-fp16", "onnx-fp32"), "--engine --fp16", format="engine"),
    Form("trt-int8", "int8", "{model}.int8.trt{trt}.sm{sm}.engine", None, "TensorRT INT8 engine",
         ("onnx-int8-qdq", "onnx-fp32"), "--engine --int8", format="engine"),
)}


def onnx_forms() -> list[Form]:
    """The ONNX forms of the table as it is now (a row added at run time included)."""
    return [f for f in FORMS.values() if f.artifact is not None]


def engine_forms() -> list[Form]:
    return [f for f in FORMS.values() if f.artifact is None]


def engine_precisions() -> tuple[str, ...]:
    """The precisions TensorRT engines are built at (the engine rows of the table)."""
    return tuple(dict.fromkeys(f.precision for f in engine_forms()))


def tensorrt_bound(trt: str) -> list[Form]:
    """The ONNX forms whose files a TensorRT version builds engines from (check-trt checks them)."""
    return [f for f in onnx_forms() if trt in f.tensorrt]


def engine_source(precision: str, trt: str) -> Form:
    """The ONNX form an engine of `precision` is built from on TensorRT `trt` ("10.3", "11"):
    the first of its row's built_from that this TensorRT takes."""
    spec = next(f for f in engine_forms() if f.precision == precision)
    return next(FORMS[n] for n in spec.built_from if trt in FORMS[n].tensorrt)


def options_that_make(precision: str, engine: bool = False) -> str | None:
    """The `kedge export` options that make a form of `precision` (an engine, or an ONNX
    file), or None when no row makes one."""
    rows = engine_forms() if engine else onnx_forms()
    return next((f.made_by for f in rows if f.precision == precision), None)


def form(name: str) -> Form:
    spec = FORMS.get(name)
    if spec is None:
        raise KedgeError(f"unknown form {name!r}: choose from {', '.join(FORMS)}")
    return spec


def form_of_artifact(key: str) -> Form | None:
    return next((f for f in onnx_forms() if f.artifact == key), None)
