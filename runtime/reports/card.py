"""A bundle's kedge.json, read as a model card: what `kedge card` prints.

Everything comes from the manifest, so the card can never disagree with the files
beside it: intended use, training data, test metrics with 95 % intervals (overall,
per source, per class and per file format), parity of every exported form,
calibration, shipped and left-out files, and known limitations. The metrics lead with
the worst source: a model is judged where it does worst, never on overall accuracy.
"""
from __future__ import annotations

import math
from typing import Any

from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.envelope.gate import card_lines
from kedge.runtime.reports.evaluate import NOT_VALIDATED_MARGIN, group_table, not_validated


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _ci(interval: list[float] | None) -> str:
    return "" if not interval else f" (95 % CI {100 * interval[0]:.1f}-{100 * interval[1]:.1f})"


def render_card(bundle: Bundle) -> str:
    """The card text, with the bundle's folder on this machine (for a shipped model, inside
    the installed package), which the manifest cannot know."""
    model = bundle.section("model")
    training = bundle.section("training")
    card = bundle.section("card")
    lines = [f"{model.get('name', '?')}: {', '.join(model.get('classes', []))}",
             f"  paper          {model.get('paper', '-')}",
             f"  intended use   {bundle.intended_use}",
             f"  location       {bundle.path.resolve()}"]
    params = model.get("parameters", {})
    options = model.get("options", {})
    lines.append(f"  architecture   {model.get('architecture', '-')}, {params.get('total', 0):,} parameters"
                 + (f"; options {', '.join(f'{k}={v}' for k, v in options.items())}" if options else ""))
    lines.append(f"  preprocessing  version {bundle.section('preprocessing').get('version', '-')}")
    lines += _lead(bundle)
    data = card.get("training_data") or {}
    counts = data.get("counts") or training.get("dataset", {}).get("counts") or {}
    lines += ["", "Training data"]
    if data.get("source"):
        lines.append(f"  source         {data['source']}")
    for split, per_class in counts.items():
        lines.append(f"  {split:<14} " + ", ".join(f"{c} {n}" for c, n in per_class.items())
                     + f" (total {sum(per_class.values())})")
    by_source = training.get("dataset", {}).get("counts_by_source", {}).get("train", {})
    left_out = set(training.get("unvalidated_sources") or []) if training.get("train_unvalidated") is False else set()
    if len(by_source) > 1:
        for source, per_class in by_source.items():
            lines.append(f"  {'train, ' + source:<14} " + ", ".join(f"{c} {n}" for c, n in per_class.items())
                         + ("  (in the train split, NOT trained on: --no-train-unvalidated)" if source in left_out
                            else ""))
    for key in ("deduplication", "split"):
        if data.get(key):
            lines.append(f"  {key:<14} {data[key]}")
    if training:
        lines += ["", "Training",
                  f"  {training.get('epochs_run', '-')} epochs run of {training.get('epochs', '-')} (kept epoch "
                  f"{training.get('best_epoch', '-')}), batch {training.get('batch_size', '-')}, "
                  f"{training.get('optimizer', 'Adam')} lr {training.get('lr', '-')}, "
                  f"seed {training.get('seed', '-')}, augmentation {'on' if training.get('augment') else 'off'}"
                  + (", source-erasing augmentation" if training.get("augment") and training.get("source_augment")
                     else ""),
                  f"  sources        {_sources(training.get('sources'))}; loss weights "
                  f"{training.get('balance', 'none')}; epoch chosen by {training.get('select', 'val-loss')}",
                  f"  device         {training.get('device', '-')}, {training.get('keras', '')}"]
    lines += _metrics(bundle.section("metrics").get("test"))
    lines += card_lines(bundle.section("envelope") or None)
    lines += _parity(bundle)
    calibration = bundle.section("calibration")
    if calibration:
        lines += ["", "INT8 calibration",
                  f"  {calibration.get('method')} on {calibration.get('images')} images of "
                  f"{calibration.get('folder')}" + (f" ({calibration['split']} split)" if calibration.get("split")
                                                    else "")]
        lines += int8_tools_section(calibration)
    lines += _files(bundle)
    if card.get("limitations"):
        lines += ["", "Known limitations"] + [f"  - {item}" for item in card["limitations"]]
    return "\n".join(lines)


def _lead(bundle: Bundle) -> list[str]:
    """What a reader needs first: where the model was validated (per source, with the 95 %
    Wilson interval), which sources it was not validated on and why, and what the input
    envelope refuses. The detail follows in the sections below."""
    from kedge.runtime.envelope.gate import wilson_lower

    groups = (bundle.section("metrics").get("test") or {}).get("by_source") or {}
    envelope = bundle.section("envelope")
    validated = list(envelope.get("validated") or [])
    unvalidated = list(bundle.section("training").get("unvalidated_sources") or [])
    lines = ["", "Where it was validated (test split; detail below)"]
    rule = envelope.get("rule") or {}
    for name in validated:
        row = groups.get(name)
        if row:
            agrees = "" if rule.get(name, True) else "; named with --validated (the Wilson rule alone: not cleared)"
            lower = wilson_lower(row["balanced_accuracy"], row["n"])
            lines.append(f"  validated      {name}: balanced accuracy {row['balanced_accuracy']:.3f} (95 % Wilson "
                         f"lower bound {lower:.3f}, chance {row['chance']:.3f}), n={row['n']}{agrees}")
    for name in sorted(set(groups) - set(validated)):
        row = groups[name]
        why = ("its labels are no target of this model (--unvalidated-source: the checkpoint was not chosen on them; "
               "the training data's source line says why)" if name in unvalidated
               else "its balanced accuracy does not clear chance")
        lines.append(f"  NOT validated  {name}: {why}; answer mix there: top answer {row['top_answer']['class']} "
                     f"{_pct(row['top_answer']['share'])} of {row['n']}")
    if not validated:
        lines.append("  validated      no envelope records the validated sources (`kedge envelope`)")
    else:
        lines.append("  input check    answers are withheld for images unlike the validated sources' (photographs, "
                     "plots, text, inverted, rotated or cropped films); not for wrong labels within them")
    return lines


def _sources(spec: dict[str, Any] | None) -> str:
    if not spec or not (spec.get("file") or spec.get("rule")):
        return "none given"
    return f"rule {spec['rule']}" if spec.get("rule") else f"{spec['file']} (column {spec.get('source_column')})"


def _by_source(test: dict[str, Any]) -> list[str]:
    groups = test.get("by_source") or {}
    if not groups:
        return ["  per source     no sources were given: no per-source check was possible, so nothing here says "
                "how the model does on any one collection, site or scanner"]
    worst = min(groups.items(), key=lambda kv: (math.isnan(kv[1]["balanced_accuracy"]), kv[1]["balanced_accuracy"]))
    lines = [f"  worst source   {worst[0]}: balanced accuracy {worst[1]['balanced_accuracy']:.3f} "
             f"(chance {worst[1]['chance']:.3f}), n={worst[1]['n']}, top answer {worst[1]['top_answer']['class']} "
             f"{_pct(worst[1]['top_answer']['share'])}"]
    for name in not_validated(test):
        lines.append(f"  NOT VALIDATED for images like source {name}'s: its balanced accuracy is within "
                     f"{NOT_VALIDATED_MARGIN:.2f} of chance")
    lines += group_table(groups, list(test.get("per_class", {})), "source")
    return lines


def _metrics(test: dict[str, Any] | None) -> list[str]:
    if not test:
        return ["", "Test metrics: none recorded"]
    lines = ["", f"Test split (n={test['n']}, looked at once)"] + _by_source(test)
    lines.append(f"  accuracy       {_pct(test['accuracy'])}{_ci(test.get('accuracy_ci95'))}, "
                 f"macro-F1 {test.get('macro_f1', 0):.3f}"
                 + (f", balanced accuracy {test['balanced_accuracy']:.3f}" if "balanced_accuracy" in test else ""))
    if test.get("roc_auc") is not None and not math.isnan(test["roc_auc"]):
        low, high = test["roc_auc_ci95"]
        lines.append(f"  ROC AUC        {test['roc_auc']:.3f} (95 % bootstrap CI {low:.3f}-{high:.3f}); sensitivity "
                     f"{test['sensitivity']:.3f}, specificity {test['specificity']:.3f} at p >= 0.5")
    for name, row in test.get("per_class", {}).items():
        lines.append(f"  {name:<14} precision {row['precision']:.2f}  recall {row['recall']:.2f}  "
                     f"F1 {row['f1']:.2f}  (n={row['support']})")
    formats = test.get("by_format") or {}
    if formats and all("top_answer" in row for row in formats.values()):
        lines += group_table(formats, list(test.get("per_class", {})), "format")
    else:  # cards written before per-group metrics: accuracy per format only
        for fmt, row in formats.items():
            lines.append(f"  {fmt.upper() + ' files':<14} {_pct(row['accuracy'])}{_ci(row.get('accuracy_ci95'))}, "
                         f"n={row['n']}")
    if test.get("confusion_matrix"):
        lines.append(f"  confusion      rows true, columns predicted: {test['confusion_matrix']}")
    return lines


def _parity(bundle: Bundle) -> list[str]:
    """Every (backend, form, precision) row; rows of forms this bundle does not carry are
    marked, and the headline judges only the forms it carries."""
    parity = bundle.parity
    if not parity:
        return ["", "Parity: not run"]
    from kedge.runtime.bundle.forms import FORMS

    def carried(form: str) -> bool:
        spec = FORMS.get(form)
        return spec is None or spec.artifact is None or bundle.has(spec.artifact)

    rows = [r for r in parity["rows"] if r["form"] != parity["reference"]]
    judged = [r for r in rows if carried(r["form"])]
    forms = {r["form"] for r in judged}
    failed_pairs = sum(not r["passed"] for r in judged)
    if not judged:
        verdict = "no row for a form this bundle carries"
    elif all(any(r["passed"] for r in judged if r["form"] == f) for f in forms):
        verdict = "PASSED, every form on at least one backend" + (
            f" ({failed_pairs} pair(s) FAILED: never used by auto)" if failed_pairs else "")
    else:
        verdict = "FAILED"
    lines = ["", f"Parity against {parity['reference']} on {parity['data']} ({parity['split']}, n={parity['n']}), "
                 f"forms this bundle carries: {verdict}"]
    for row in rows:
        ties = f", {row['near_ties']} near ties" if row.get("near_ties") else ""
        lines.append(f"  {row.get('backend', '-'):<12} {row['form']:<14} {row.get('precision', ''):<5} accuracy "
                     f"{_pct(row['accuracy'])}  agreement {_pct(row['agreement'])}{ties}  max|dp| "
                     f"{row['max_abs_diff']:.1e}  {'PASSED' if row['passed'] else 'FAILED'}"
                     + ("" if carried(row["form"]) else "  (form not shipped)"))
    return lines


def _files(bundle: Bundle) -> list[str]:
    lines = ["", "Files (sha256)"] + [f"  {rel:<34} {digest[:16]}" for rel, digest in bundle.files.items()]
    left = bundle.left_out
    if left:
        lines.append("  not shipped (size budget): " + ", ".join(
            f"{v['file']} ({(v['bytes'] or 0) / 1e6:.0f} MB, {str(v['sha256'])[:12]})" for v in left.values()))
    return lines


# --- INT8 tools (issue 14: kedge export --calib-method auto, --keep-float) -------------------------

def int8_tools_section(calibration: dict[str, Any]) -> list[str]:
    """How the calibration method was chosen and which nodes each INT8 form keeps in float."""
    lines = []
    choice = calibration.get("method_choice")
    if choice:
        scores = ", ".join(f"{m} {s['agreement']:.1%}{' (passes)' if s['passed'] else ''}"
                           for m, s in choice["scores"].items())
        lines.append(f"  method chosen  on {choice['chosen_on']}: agreement {scores}")
    keep = calibration.get("tensorrt_keep_float")
    if keep:
        how = "named by hand" if keep["mode"] != "auto" else (
            f"found greedily; validation parity {'passed' if keep['passed'] else 'still failed'} "
            f"after {len(keep['steps']) - 1} steps")
        lines.append(f"  TensorRT Q/DQ  kept in float ({how}): {_kept(keep)}")
        worst = keep.get("sensitivity", {}).get("worst", [])[:3]
        if worst:
            lines.append("  worst SQNR     " + "; ".join(f"{w['tensor']} {w['qdq_sqnr']:.1f} dB" for w in worst))
    if calibration.get("cpu_keep_float"):
        lines.append(f"  CPU uint8      kept in float (named by hand): {_kept(calibration['cpu_keep_float'])}")
    return lines


def _kept(keep: dict[str, Any]) -> str:
    """The patterns as given (with how many nodes they matched), else the node names."""
    if keep.get("patterns"):
        return f"{', '.join(keep['patterns'])} ({len(keep['nodes'])} nodes)"
    return ", ".join(keep["nodes"]) or "none"


def card_json(bundle: Bundle) -> dict[str, Any]:
    """What `kedge card --json` prints for one bundle: where it is on this machine, then its kedge.json."""
    return {"location": str(bundle.path.resolve()), **bundle.manifest}
