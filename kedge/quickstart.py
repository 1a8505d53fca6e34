"""The closing summary of `make quickstart`: where the bundle is, what was measured, what next.

Run by the Makefile as `python -m kedge.quickstart BUNDLE PREDICTIONS.csv`; it reads only
the bundle's kedge.json and the CSV that `kedge infer --csv` wrote.
"""
from __future__ import annotations

import collections
import csv
import sys
from pathlib import Path

from kedge.runtime.bundle.forms import onnx_forms
from kedge.runtime.bundle.manifest import load_bundle


def summary(bundle_dir: Path, predictions: Path) -> str:
    bundle = load_bundle(bundle_dir)
    test = bundle.section("metrics").get("test", {})
    parity = bundle.parity
    with open(predictions, newline="", encoding="utf-8") as handle:
        labels = collections.Counter(row["label"] or "withheld (outside the input envelope)"
                                     for row in csv.DictReader(handle))
    forms = [spec.file for spec in onnx_forms() if bundle.has(str(spec.artifact))]
    lines = ["", "quickstart: done",
             f"  bundle      {bundle_dir}  ({bundle.name}: {', '.join(forms)})"]
    if test:
        lines.append(f"  test split  accuracy {test['accuracy']:.3f} on n={test['n']} synthetic images")
    if parity:
        rows = [r for r in parity.get("rows", []) if not r.get("reference")]
        parts = [f"{r.get('backend', '')} {r['form']} {r.get('precision', '')} "
                 f"{'PASSED' if r['passed'] else 'FAILED'} (agreement {r['agreement']:.1%}"
                 + (f", {r['near_ties']} near ties" if r.get("near_ties") else "") + ")" for r in rows]
        lines.append(f"  parity      against {parity['reference']} on the {parity['split']} split "
                     f"(n={parity['n']}): {'; '.join(parts)}")
    counted = ", ".join(f"{label} {count}" for label, count in labels.most_common())
    lines += [f"  classified  {sum(labels.values())} Osteopenia images: {counted} -> {predictions}",
              "  next        kedge card " + str(bundle_dir) + "                  (the model card)",
              "              kedge infer YOUR.png --model " + str(bundle_dir),
              "              make quickstart DATA=../shared/data/knee-3class    (a real model on real radiographs)",
              "  Synthetic knees only show that the pipeline works; the models mean nothing for real patients."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1]), Path(sys.argv[2])))
