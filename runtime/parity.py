"""Parity: every exported form against a reference, on one labelled folder.

For each form: accuracy and macro-F1 on the labels, top-1 agreement with the
reference, and the max and mean |dp| of the class probabilities. Each row passes or
fails against the thresholds below, which depend on the form's precision:

| precision | agreement with the reference | max abs diff | accuracy vs reference |
|---|---|---|---|
| fp32 | 100 % | at most 1e-4 | - |
| fp16 | at least 99.5 % | - | - |
| int8 | at least 98 % | - | within 1 point |

Near ties (the small-n rule). Each precision has a tolerance on the probabilities
(`tolerance` below: 1e-4 fp32, 1e-3 fp16, 0.05 int8). If a form stays within it on
every image (max |dp| <= tolerance), a class flip is only possible where the
reference's own top-1 margin (p1 - p2) is at most 2 x tolerance, and there it says
nothing about the form: the reference itself was undecided within the precision's
error. Such flips are "near ties": reported, but not counted in the agreement or the
accuracy comparison. Every other flip counts, and a form past its tolerance gets no
excuse at all. Without this, one coin-flip image among 36 (2.8 points) fails a 98 %
rule however good the form is.

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
    "fp32": {"min_agreement": 1.0, "max_abs_diff": 1e-4, "tolerance": 1e-4},
    "fp16": {"min_agreement": 0.995, "tolerance": 1e-3},
    "int8": {"min_agreement": 0.98, "max_accuracy_drop": 0.01, "tolerance": 0.05},
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
    near_ties: int = 0  # flips excused by the near-tie rule (module docstring); agreement counts them

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
    diff = np.abs(p - q)
    flips = p.argmax(1) != q.argmax(1)
    ties = flips & near_ties(q, float(diff.max()), THRESHOLDS[precision]["tolerance"])
    row = ParityRow(form=form, backend=backend, precision=precision, n=len(y_true),
                    accuracy=float(report["accuracy"]), macro_f1=float(report["macro_f1"]),
                    agreement=float((flips == 0).mean()), max_abs_diff=float(diff.max()),
                    mean_abs_diff=float(diff.mean()), passed=True, reference=is_reference,
                    near_ties=int(ties.sum()))
    if not is_reference:
        counted = np.where(ties, q.argmax(1), p.argmax(1))  # a near tie scores as the reference's answer
        row.problems = _problems(row, float((counted == q.argmax(1)).mean()),
                                 float((counted == y_true).mean()), float((q.argmax(1) == y_true).mean()))
    row.passed = not row.problems
    return row


def near_ties(reference: np.ndarray, max_abs_diff: float, tolerance: float) -> np.ndarray:
    """Images whose reference top-1 margin is within 2 x tolerance, when the form kept
    every probability within tolerance (else none: a form past tolerance gets no excuse)."""
    if not np.isfinite(max_abs_diff) or max_abs_diff > tolerance:
        return np.zeros(len(reference), dtype=bool)
    top = np.sort(reference, axis=1)
    return (top[:, -1] - top[:, -2]) <= 2 * tolerance


def _problems(row: ParityRow, agreement: float, accuracy: float, ref_accuracy: float) -> list[str]:
    """What fails, with near ties scored as agreeing (`agreement`, `accuracy` are the counted values)."""
    limits = THRESHOLDS[row.precision]
    problems = []
    ties = f" ({row.near_ties} near ties not counted)" if row.near_ties else ""
    if not np.isfinite(row.max_abs_diff):
        problems.append("non-finite probabilities")
    if agreement < limits["min_agreement"] - 1e-12:
        problems.append(f"agreement {agreement:.2%} < {limits['min_agreement']:.1%}{ties}")
    if "max_abs_diff" in limits and row.max_abs_diff > limits["max_abs_diff"]:
        problems.append(f"max |dp| {row.max_abs_diff:.2g} > {limits['max_abs_diff']:g}")
    if "max_accuracy_drop" in limits and abs(accuracy - ref_accuracy) > limits["max_accuracy_drop"] + 1e-12:
        problems.append(f"accuracy {accuracy:.3f} vs reference {ref_accuracy:.3f} differs by more than "
                        f"{limits['max_accuracy_drop'] * 100:g} point{ties}")
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
    header = (f"{'form':<15}{'n':>5}{'accuracy':>10}{'macro-F1':>10}{'agree':>9}{'ties':>6}{'max|dp|':>10}"
              f"{'mean|dp|':>10}  result")
    lines = [header, "-" * len(header)]
    for r in rows:
        result = "reference" if r.reference else ("PASSED" if r.passed else "FAILED: " + "; ".join(r.problems or []))
        lines.append(f"{r.form:<15}{r.n:>5}{r.accuracy:>10.4f}{r.macro_f1:>10.4f}{r.agreement:>9.2%}{r.near_ties:>6}"
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
