"""Parity: every (backend, form, precision) pair against a reference, on one labelled folder.

Two backends can answer differently from one file (OpenVINO's and ONNX Runtime's
INT8 kernels round differently), so each pair gets its own row. For each pair:
accuracy and macro-F1 on the labels, top-1 agreement with the reference, and the
max and mean |dp| of the class probabilities. Each row passes or fails against the
thresholds below, which depend on the precision it runs at:

| precision | agreement with the reference | max abs diff | accuracy vs reference |
|---|---|---|---|
| fp32 | 100 % | at most 1e-4 | - |
| fp16, bf16 | at least 99.5 % | - | - |
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
ONNX, else the FP16 float form (run by ONNX Runtime), so parity runs on a lean install too. Pairs are loaded
one at a time (the Jetson has little memory); each reads the images through the one
preprocessing function. The rows are recorded in kedge.json, and `auto` only ever
picks a pair whose row PASSED (`status`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kedge.runtime.backends import Pair, backend_class, names, pair, runnable_pairs
from kedge.runtime.backends.base import Backend
from kedge.runtime.bundle.forms import FORMS, Form
from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.folders import LabelledImage
from kedge.runtime.reports.evaluate import Predictions, predict_items
from kedge.runtime.reports.metrics import classification_report

THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"min_agreement": 1.0, "max_abs_diff": 1e-4, "tolerance": 1e-4},
    "fp16": {"min_agreement": 0.995, "tolerance": 1e-3},
    "bf16": {"min_agreement": 0.995, "tolerance": 1e-2},
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
    runner: str = ""  # what ran, as the backend describes itself (e.g. 'openvino:cpu onnx-int8 int8')
    near_ties: int = 0  # flips excused by the near-tie rule (module docstring); agreement counts them
    file_sha256: str | None = None  # what the row judged (Pair.identity): a changed file makes it "not checked"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.form}/{self.precision}"


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


def onnx_reference(bundle: Bundle) -> Pair:
    """The lean reference: the bundle's FP32 ONNX on ONNX Runtime, else its float form
    (the FP16-stored weights a shipped bundle carries, run in FP32), so parity runs on a
    lean install of a shipped model too (one line when it has neither)."""
    for spec in (FORMS["onnx-fp32"], FORMS["onnx-fp16"]):
        if bundle.has(str(spec.artifact)):
            return pair("onnxruntime", spec.name)
    if str(FORMS["onnx-fp32"].artifact) in bundle.left_out:
        bundle.file(str(FORMS["onnx-fp32"].artifact))  # says it was left out when the bundle was shipped
    raise KedgeError(f"{bundle.path}: no reference: parity needs model.keras with TensorFlow, or the FP32 "
                     f"or FP16 ONNX (run `kedge export {bundle.path}`)")


def reference_pair(bundle: Bundle, reference: str | None = None) -> Pair:
    """The parity reference of a bundle, not yet opened: the form of a registered reference
    backend (`keras`: the Keras original, which kedge.train registers) or `onnx-fp32`
    (`onnx_reference`). Default: the reference backend where it is usable here and the
    bundle has its file (TensorFlow and model.keras, or for a shipped bundle the one put back
    beside it), else the FP32 ONNX. Parity, the golden set and the INT8 tools all score
    against this one reference."""
    references = _reference_forms()
    if reference not in (None, *references, "onnx-fp32"):
        raise KedgeError(f"--reference {reference}: choose {' or '.join([*references, 'onnx-fp32'])} (which falls "
                         "back to the float form onnx-fp16 where a shipped bundle has no FP32 file)")
    for form_name, (name, spec) in references.items():
        if reference not in (None, form_name):
            continue
        cls = backend_class(name)
        problem = cls.problem()
        if reference is not None and problem is not None:
            raise KedgeError(f"--reference {reference} {problem}; use --reference onnx-fp32")
        if reference is not None or (problem is None and spec in cls.forms_in(bundle)):
            return Pair(name, spec, spec.precision)  # named: opening it says what is missing, if anything
    return onnx_reference(bundle)


def _reference_forms() -> dict[str, tuple[str, Form]]:
    """Form name -> (backend, form) of every registered reference backend (the Keras original)."""
    return {spec.name: (name, spec) for name in names() if backend_class(name).reference
            for spec in backend_class(name).own_forms}


def run_parity(
    bundle: Bundle,
    reference: Pair,
    pairs: Sequence[Pair],
    items: Sequence[LabelledImage],
    classes: Sequence[str],
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[ParityRow], list[tuple[str, str]]]:
    """Run the reference, then each pair in turn; returns rows and unreadable files."""
    if not items:
        raise KedgeError("parity needs at least one labelled image")
    with reference.open(bundle) as backend:
        ref = predict_items(backend, items, batch_size, progress)
        rows = [compare(reference.form.name, reference.backend, reference.precision, ref, ref, classes,
                        is_reference=True)]
        rows[0].runner = _runner(backend)
    if not ref.items:
        raise KedgeError("none of the parity images could be read")
    for compared in pairs:
        with compared.open(bundle) as backend:
            predictions = predict_items(backend, ref.items, batch_size, progress)
            runner = _runner(backend)
        rows.append(compare(compared.form.name, compared.backend, compared.precision, predictions, ref, classes))
        rows[-1].runner = runner
    return rows, ref.failures


def _runner(backend: Backend) -> str:
    return backend.session.name if backend.session is not None else ""


def format_table(rows: Sequence[ParityRow]) -> str:
    header = (f"{'backend':<13}{'form':<15}{'prec':<6}{'n':>5}{'accuracy':>10}"
              f"{'macro-F1':>10}{'agree':>9}{'ties':>6}{'max|dp|':>10}{'mean|dp|':>10}  result")
    lines = [header, "-" * len(header)]
    for r in rows:
        result = "reference" if r.reference else ("PASSED" if r.passed else "FAILED: " + "; ".join(r.problems or []))
        lines.append(f"{r.backend:<13}{r.form:<15}{r.precision:<6}{r.n:>5}{r.accuracy:>10.4f}{r.macro_f1:>10.4f}"
                     f"{r.agreement:>9.2%}{r.near_ties:>6}{r.max_abs_diff:>10.2e}{r.mean_abs_diff:>10.2e}  {result}")
    return "\n".join(lines)


def bundle_parity(
    bundle: Bundle,
    data: Any,
    split: str | None,
    reference: Pair | None = None,
    forms: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    record: bool = True,
    backends: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Parity of every runnable (backend, form, precision) pair of a bundle on a labelled
    folder, recorded in its kedge.json (rows of pairs not run this time are kept when
    the reference, data and split are the same).

    `reference` defaults to the FP32 ONNX on ONNX Runtime, else the FP16 float form (the lean reference); the CLI
    passes `reference_pair`'s: the Keras original where TensorFlow and model.keras are present.
    """
    import datetime

    from kedge.runtime.bundle.manifest import portable_path

    items = bundle.labelled(data, split)
    runnable = runnable_pairs(bundle, list(backends) if backends else None)
    if forms:
        unknown = [f for f in forms if f not in {p.form.name for p in runnable}]
        if unknown:
            raise KedgeError(f"{bundle.path}: cannot run {', '.join(unknown)} here "
                             f"(available: {', '.join(sorted({p.form.name for p in runnable})) or 'none'})")
        runnable = [p for p in runnable if p.form.name in forms]
    if reference is None:
        reference = onnx_reference(bundle)
    compared = [p for p in runnable if p.key != reference.key]
    if not compared:
        raise KedgeError(f"{bundle.path}: no exported form to compare; run `kedge export` first")
    rows, failures = run_parity(bundle, reference, compared, items, bundle.classes, batch_size, progress)
    identities = {p.key: p.identity(bundle) for p in runnable}
    for row in rows:
        row.file_sha256 = identities.get(row.key)
    result = {
        "data": portable_path(data), "split": split or "all", "reference": reference.form.name, "n": rows[0].n,
        "thresholds": THRESHOLDS, "rows": [r.to_json() for r in rows],
        "passed": all(r.passed for r in rows),
        "forms_passed": forms_passed([r.to_json() for r in rows]),
        "unreadable": [{"path": portable_path(p, data), "problem": m} for p, m in failures],
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "forms": {name: spec.description for name, spec in FORMS.items() if name in {p.form.name for p in runnable}},
    }
    kept = bundle.parity.get("reference")
    if record and kept in _reference_forms() and not backend_class(reference.backend).reference:
        # A lean install checking a shipped model against its float form must not replace
        # the parity the bundle carries against its Keras original, the stronger reference.
        record = False
        result["not_recorded"] = ("the bundle's recorded parity is against Keras; a run against "
                                  f"{reference.form.name} is shown, not recorded")
    result["recorded"] = record
    if record:
        record_parity(bundle, result)
    return result


def record_parity(bundle: Bundle, result: dict[str, Any]) -> None:
    """Write the parity result into kedge.json atomically, merging with earlier rows of the
    same reference, data and split. Only kedge.json changes, so the sha256 of every other
    file ("files") stays as recorded (a file beside a shipped bundle, such as the model.keras
    a reference was read from, is not added)."""
    old = bundle.parity
    if all(old.get(k) == result[k] for k in ("reference", "data", "split")):
        keys = {row_key(r) for r in result["rows"]}
        kept = [r for r in old.get("rows", []) if row_key(r) not in keys]
        result["rows"] = result["rows"][:1] + kept + result["rows"][1:]
        result["passed"] = all(r["passed"] for r in result["rows"])
        result["forms_passed"] = forms_passed(result["rows"])
    bundle.update(parity=result)


def forms_passed(rows: Sequence[dict[str, Any]]) -> bool:
    """Every form checked has at least one (backend, precision) that PASSED."""
    by_form: dict[str, bool] = {}
    for row in rows:
        by_form[row["form"]] = by_form.get(row["form"], False) or bool(row["passed"])
    return all(by_form.values())


def _digest(identity: object) -> str:
    """The sha256 part of a pair's identity, shortened (an engine's identity begins with its
    file name and ends with the engine's own sha256)."""
    return str(identity).rsplit(":", 1)[-1][:12]


def row_key(row: dict[str, Any]) -> str:
    """backend/form/precision of a recorded row. Rows written before backends were plug-ins
    name a display string as their backend; then, ONNX forms ran only on ONNX Runtime and
    engines only on TensorRT."""
    backend = str(row.get("backend", ""))
    if backend not in (*names(), "keras"):
        spec = FORMS.get(str(row.get("form")))
        backend = "keras" if row.get("form") == "keras" else (
            "tensorrt" if spec is not None and spec.format == "engine" else "onnxruntime")
    return f"{backend}/{row.get('form')}/{row.get('precision')}"


PASSED, FAILED, UNCHECKED = "passed", "FAILED", "not checked"


def status(bundle: Bundle, pair: Pair) -> tuple[str, str]:
    """(PASSED | FAILED | UNCHECKED, detail) of one (backend, form, precision) in the bundle's
    recorded parity. The reference itself counts as passed. A row judges the bytes whose
    sha256 it records: a row without one, or for a file that has changed since (a
    re-export without --data, one killed during its parity step), counts as not checked."""
    parity = bundle.parity
    for row in parity.get("rows", []):
        if row_key(row) == pair.key:
            judged, now = row.get("file_sha256"), pair.identity(bundle)
            if judged != now and (row.get("passed") or judged is not None):  # a FAILED row stays failed
                why = ("its parity row names no file sha256 (made before rows were bound to files)" if judged is None
                       else f"its file changed since its parity row (sha256 {_digest(judged)}, now {_digest(now)})")
                return UNCHECKED, f"{why}; run `kedge parity {bundle.path} --data DIR --split test`"
            where = f"vs {parity.get('reference')} on {parity.get('split')} split, n={row.get('n')}"
            if row.get("passed"):
                return PASSED, ("the reference" if row.get("reference") else where)
            return FAILED, f"{'; '.join(row.get('problems') or [])} ({where})"
    return UNCHECKED, "no parity row; run `kedge parity BUNDLE --data DIR --split test`"


JSON_FIELDS = ("backend", "form", "precision", "accuracy", "macro_f1", "agreement", "near_ties", "max_abs_diff",
               "mean_abs_diff", "passed", "runner", "n", "reference", "problems")


def format_result(result: dict[str, Any]) -> str:
    """A parity result as `kedge parity` and `kedge export` print it: the table, the images
    skipped, the verdict, and why it was not recorded (when it was not)."""
    lines = [f"parity on {result['data']} ({result['split']}, n={result['n']}), reference {result['reference']}",
             format_table([ParityRow(**row) for row in result["rows"]])]
    lines += [f"  skipped {failure['path']}: {failure['problem']}" for failure in result["unreadable"]]
    lines.append("PASSED" if result["passed"] else "FAILED")
    if result.get("not_recorded"):
        lines.append(f"not recorded: {result['not_recorded']}")
    return "\n".join(lines)


def result_json(result: dict[str, Any]) -> dict[str, Any]:
    """A parity result as `kedge parity --json` prints it: each row with its JSON_FIELDS only."""
    return {**result, "rows": [{k: row.get(k) for k in JSON_FIELDS} for row in result["rows"]]}
