"""The envelope's measurement table (`kedge envelope --report`): what it keeps and what it refuses.

Issue 19's targets, on the bundle's TEST split (images the envelope was not fitted
or thresholded on): at most 10 % of the validated sources' images outside; inverted
polarity refused >= 95 %, rotated 90 degrees >= 80 %, a quarter-size corner crop
>= 70 %, non-radiographs 100 %. Unvalidated sources and `kedge synth` knees are
reported only (the envelope must not be tuned against kedge's own generator).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from kedge.runtime.envelope import gate as env
from kedge.runtime.envelope import outsiders
from kedge.runtime.envelope.fit import Sample
from kedge.runtime.inputs.preprocess import preprocess, read_bytes

GROSS = (("inverted", "inverted polarity", 0.95), ("rotated-90", "rotated 90 degrees", 0.80),
         ("corner-crop", "quarter-size corner crops", 0.70))
MAX_OUTSIDE_VALIDATED = 0.10


def _row(family: str, checks: Sequence[env.Check], target: str = "", met: bool | None = None) -> dict[str, Any]:
    outside = sum(not c.inside for c in checks)
    return {"family": family, "n": len(checks), "outside": outside,
            "outside_share": round(outside / len(checks), 4) if checks else None, "target": target, "met": met}


def _refused(family: str, checks: Sequence[env.Check], at_least: float) -> dict[str, Any]:
    row = _row(family, checks, f"refused >= {at_least:.0%}")
    row["met"] = bool(checks) and row["outside_share"] >= at_least
    return row


def stress_report(envelope: env.Envelope, samples: Sequence[Sample], synthetic: int = 30,
                  progress: bool = True) -> dict[str, Any]:
    """Rows of (family, n, outside, share, target, met) and whether every target is met."""
    rows: list[dict[str, Any]] = []
    validated = envelope.validated
    test = [s for s in samples if s.split == "test" and s.item.source in validated]
    for source in validated:
        checks = envelope.check_features(_stack([s for s in test if s.item.source == source]))
        row = _row(f"source {source}, test split", checks, f"outside <= {MAX_OUTSIDE_VALIDATED:.0%}")
        row["met"] = bool(checks) and row["outside_share"] <= MAX_OUTSIDE_VALIDATED
        rows.append(row)
    gross: dict[str, list[np.ndarray]] = {key: [] for key, _, _ in GROSS}
    for sample in tqdm(test, desc="Gross errors", unit="img", disable=None if progress else True, leave=False):
        for family, x in outsiders.gross_errors(read_bytes(sample.item.path), str(sample.item.path)):
            gross[family].append(env.image_features(x))
    for key, label, at_least in GROSS:
        rows.append(_refused(f"{label} (test, {', '.join(validated)})",
                             envelope.check_features(np.stack(gross[key])) if gross[key] else [], at_least))
    by_kind: dict[str, list[tuple[str, env.Check]]] = {}
    for kind, name, data in outsiders.non_radiographs():
        by_kind.setdefault(kind, []).append((name, envelope.check(preprocess(data, name)[None])[0]))
    for kind, found in by_kind.items():
        row = _refused(f"non-radiographs: {kind}", [c for _, c in found], 1.0)
        row["missed"] = [name for name, c in found if c.inside]
        rows.append(row)
    rows.append(_refused("non-radiographs, all", [c for found in by_kind.values() for _, c in found], 1.0))
    for source in sorted({s.item.source for s in samples} - set(validated)):
        for label, chosen in (("test split", [s for s in samples if s.item.source == source and s.split == "test"]),
                              ("all splits", [s for s in samples if s.item.source == source])):
            if chosen:
                rows.append(_row(f"source {source} (unvalidated), {label}", envelope.check_features(_stack(chosen)),
                                 "report only"))
    if synthetic:
        rows.append(_row("synthetic knees (kedge synth)", envelope.check(synthetic_knees(synthetic)), "report only"))
    return {"rows": rows, "targets_met": all(r["met"] for r in rows if r["met"] is not None)}


def device_check(bundle: Any) -> tuple[bool | None, str]:
    """For `kedge verify`: does the envelope load here (sha256, format) and refuse every
    non-radiograph made on this machine? (None, why) when the bundle has no envelope."""
    fitted = env.bundle_envelope(bundle)
    if fitted is None:
        return None, "the bundle has no envelope, so kedge infer makes no input check (`kedge envelope` fits one)"
    found = outsiders.non_radiographs()
    let_in = [name for _, name, data in found if fitted.check(preprocess(data, name)[None])[0].inside]
    detail = (f"validated on {', '.join(fitted.validated)}; {len(found) - len(let_in)} of {len(found)} "
              "non-radiographs made here refused" + (f" (let in: {', '.join(let_in)})" if let_in else ""))
    return not let_in, detail


def _stack(samples: Sequence[Sample]) -> np.ndarray:
    return np.stack([s.features for s in samples]) if samples else np.zeros((0, env.FEATURE_LENGTH))


def synthetic_knees(count: int, seed: int = 0) -> np.ndarray:
    """`count` synthetic knees of `kedge synth` (every class density in turn), as model inputs."""
    from kedge.runtime.checks.synthetic import CLASS_DENSITY, knee_radiograph

    rng = np.random.default_rng(seed)
    densities = list(CLASS_DENSITY.values())
    images = []
    for index in range(count):
        grey = knee_radiograph(densities[index % len(densities)], rng)
        images.append(preprocess(cv2.imencode(".png", grey)[1].tobytes(), f"synthetic-{index}"))
    return np.stack(images)


def format_report(report: dict[str, Any], title: str) -> str:
    lines = [title, f"  {'images':<48}{'n':>5}{'outside':>9}{'share':>8}  target"]
    for row in report["rows"]:
        share = "-" if row["outside_share"] is None else f"{row['outside_share']:.1%}"
        mark = "" if row["met"] is None else ("  met" if row["met"] else "  NOT MET")
        missed = f" (inside: {', '.join(row['missed'])})" if row.get("missed") else ""
        lines.append(f"  {row['family'][:48]:<48}{row['n']:>5}{row['outside']:>9}{share:>8}  {row['target']}{mark}"
                     + missed)
    lines.append("every target met" if report["targets_met"] else "NOT every target met")
    return "\n".join(lines)


def format_summary(result: dict[str, Any]) -> str:
    """What `kedge envelope` prints: the fitted envelope, its held-out shares and, with
    --report, the measurement table (result["report"], measured on result["machine"])."""
    fitted, threshold = result["fitted_on"], result["thresholded_on"]
    lines = [f"{result['model']}: envelope on {', '.join(result['validated'])} ({result['validated_by']}); "
             f"{result['components']} components, fitted on {fitted['n']} train images, threshold "
             f"{result['threshold']:.3f} keeps {result['keep']:.0%} of {threshold['n']} validation images"
             + ("" if result["written"] else " (dry run: nothing written)")]
    for source, row in result["held_out"].items():
        lines.append(f"  held out: source {source} ({'validated' if row['validated'] else 'unvalidated'}, "
                     f"{row['splits']}): {row['outside']} of {row['n']} outside ({row['outside_share']:.0%})")
    if "report" in result:
        lines.append(format_report(result["report"], f"measured on {result['machine']}:"))
    return "\n".join(lines)
