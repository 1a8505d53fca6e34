"""Parity: every exported form against a reference, on one labelled folder.

For each form: accuracy and macro-F1 on the labels, top-1 agreement with the
reference, and the max and mean |dp| of the class probabilities. Each row passes or
fails against the thresholds below, which depend on the form's precision:

| precision | agreement with the reference | max abs diff | accuracy vs reference |
|---|---|---|---|
| fp32 | 100 % | at most 1e-4 | - |
| fp16 | at least 99.5 % | - | - |
| int8 | at least 98 % | - | within 1 point |

The reference is the Keras original where TensorFlow is installed, else the FP32
ONNX, so parity runs on a lean install too. Forms are loaded one at a time (the
Jetson has little memory); each reads the images through the one preprocessing
function.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kedge.runtime.backends.base import Backend
from kedge.runtime.errors import KedgeError
from kedge.runtime.evaluate import Predictions, predict_items
from kedge.runtime.folders import LabelledImage
from kedge.runtime.metrics import classification_report

THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"min_agreement": 1.0, "max_abs_diff": 1e-4},
    "fp16": {"min_agreement": 0.995},
    "int8": {"min_agreement": 0.98, "max_accuracy_drop": 0.01},
}


@dataclass
class ParityRow:
    form: str
    backend: str
    precision: str
    n: int
    accuracy: float
    macro_f1: float
    agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    passed: bool
    reference: bool = False
    problems: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(form: str, backend: str, precision: str, predictions: Predictions, reference: Predictions,
            classes: Sequence[str], is_reference: bool = False) -> ParityRow:
    """One row: this form's predictions scored on the labels and against the reference's."""
    if [i.path for i in predictions.items] != [i.path for i in reference.items]:
        raise KedgeError(f"{form}: read a different set of images than the reference")
    y_true = np.array([i.label for i in predictions.items], dtype=np.int64)
    p, q = predictions.probabilities.astype(np.float64), reference.probabilities.astype(np.float64)
    report = classification_report(y_true, p.argmax(1), classes)
    ref_accuracy = float((q.argmax(1) == y_true).mean())
    diff = np.abs(p - q)
    row = ParityRow(form=form, backend=backend, precision=precision, n=len(y_true),
                    accuracy=float(report["accuracy"]), macro_f1=float(report["macro_f1"]),
                    agreement=float((p.argmax(1) == q.argmax(1)).mean()), max_abs_diff=float(diff.max()),
                    mean_abs_diff=float(diff.mean()), passed=True, reference=is_reference)
    row.problems = [] if is_reference else _problems(row, ref_accuracy)
    row.passed = not row.problems
    return row


def _problems(row: ParityRow, ref_accuracy: float) -> list[str]:
    limits = THRESHOLDS[row.precision]
    problems = []
    if not np.isfinite(row.max_abs_diff):
        problems.append("non-finite probabilities")
    if row.agreement < limits["min_agreement"] - 1e-12:
        problems.append(f"agreement {row.agreement:.2%} < {limits['min_agreement']:.1%}")
    if "max_abs_diff" in limits and row.max_abs_diff > limits["max_abs_diff"]:
        problems.append(f"max |dp| {row.max_abs_diff:.2g} > {limits['max_abs_diff']:g}")
    if "max_accuracy_drop" in limits and abs(row.accuracy - ref_accuracy) > limits["max_accuracy_drop"] + 1e-12:
        problems.append(f"accuracy {row.accuracy:.3f} vs reference {ref_accuracy:.3f} differs by more than "
                        f"{limits['max_accuracy_drop'] * 100:g} point")
    return problems


Opener = Callable[[], Backend]


def run_parity(
    reference: tuple[str, Opener],
    forms: Sequence[tuple[str, str, Opener]],
    items: Sequence[LabelledImage],
    classes: Sequence[str],
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[ParityRow], list[tuple[str, str]]]:
    """Run the reference, then each (form, precision, opener) in turn; returns rows and unreadable files."""
    if not items:
        raise KedgeError("parity needs at least one labelled image")
    ref_name, open_reference = reference
    with open_reference() as backend:
        ref = predict_items(backend, items, batch_size, progress)
        rows = [compare(ref_name, backend.name, "fp32", ref, ref, classes, is_reference=True)]
    if not ref.items:
        raise KedgeError("none of the parity images could be read")
    for form, precision, opener in forms:
        with opener() as backend:
            predictions = predict_items(backend, ref.items, batch_size, progress)
        rows.append(compare(form, backend.name, precision, predictions, ref, classes))
    return rows, ref.failures


def format_table(rows: Sequence[ParityRow]) -> str:
    header = f"{'form':<15}{'n':>5}{'accuracy':>10}{'macro-F1':>10}{'agree':>9}{'max|dp|':>10}{'mean|dp|':>10}  result"
    lines = [header, "-" * len(header)]
    for r in rows:
        result = "reference" if r.reference else ("PASSED" if r.passed else "FAILED: " + "; ".join(r.problems or []))
        lines.append(f"{r.form:<15}{r.n:>5}{r.accuracy:>10.4f}{r.macro_f1:>10.4f}{r.agreement:>9.2%}"
                     f"{r.max_abs_diff:>10.2e}{r.mean_abs_diff:>10.2e}  {result}")
    return "\n".join(lines)


def bundle_parity(
    bundle_dir: Any,
    data: Any,
    split: str | None,
    reference: tuple[str, Opener] | None = None,
    forms: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    record: bool = True,
) -> dict[str, Any]:
    """Parity of a bundle's forms on a labelled folder; recorded in its kedge.json.

    `reference` defaults to the FP32 ONNX (the lean reference); the CLI passes the
    Keras original where TensorFlow is installed.
    """
    import datetime

    from kedge.runtime.bundle import load_bundle, write_manifest
    from kedge.runtime.folders import in_split, read_split_manifest, scan_labelled
    from kedge.runtime.forms import available_forms, open_form

    bundle = load_bundle(bundle_dir)
    items = scan_labelled(data, bundle.classes)
    if split is not None:
        items = in_split(items, data, read_split_manifest(bundle.file("split_manifest")), split)
    runnable = available_forms(bundle)
    if forms:
        unknown = [f for f in forms if f not in {r.name for r in runnable}]
        if unknown:
            raise KedgeError(f"{bundle.path}: cannot run {', '.join(unknown)} here "
                             f"(available: {', '.join(r.name for r in runnable) or 'none'})")
        runnable = [r for r in runnable if r.name in forms]
    if reference is None:
        if "onnx_fp32" not in bundle.manifest.get("artifacts", {}):
            if "onnx_fp32" in bundle.manifest.get("shipped", {}).get("left_out", {}):
                bundle.file("onnx_fp32")  # says it was left out when the bundle was shipped
            raise KedgeError(f"{bundle.path}: no FP32 ONNX to use as the reference; run `kedge export` first")
        reference = ("onnx-fp32", lambda: open_form(bundle, "onnx-fp32"))
    compared = [(f.name, f.precision, (lambda f=f: open_form(bundle, f))) for f in runnable
                if f.name != reference[0]]
    if not compared:
        raise KedgeError(f"{bundle.path}: no exported form to compare; run `kedge export` first")
    rows, failures = run_parity(reference, compared, items, bundle.classes, batch_size, progress)
    result = {
        "data": str(data), "split": split or "all", "reference": reference[0], "n": rows[0].n,
        "thresholds": THRESHOLDS, "rows": [r.to_json() for r in rows],
        "passed": all(r.passed for r in rows),
        "unreadable": [{"path": p, "problem": m} for p, m in failures],
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "forms": {f.name: f.description for f in runnable},
    }
    # A shipped bundle's card keeps the parity it shipped with (against Keras, on its test split).
    result["recorded"] = record and "shipped" not in bundle.manifest
    if result["recorded"]:
        manifest = {k: v for k, v in bundle.manifest.items() if k != "files"}
        manifest["parity"] = result
        write_manifest(bundle.path, manifest)
    return result
