"""Fit a bundle's envelope from its own split, store it in the bundle, and measure it.

Why from the bundle's split.csv: it says which images the model trained on, chose
its epoch on and was tested on, and each image's source. The envelope is fitted on
the validated sources' TRAIN images, thresholded on their VALIDATION images (so
that ~95 % stay inside), and the TEST images (every source's) are held out: the
shares outside reported here are measured on images the envelope never saw.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kedge.runtime.bundle.manifest import Bundle, atomic_write_text, load_bundle
from kedge.runtime.bundle.schema import SPLITS
from kedge.runtime.envelope import gate as env
from kedge.runtime.errors import ImageError, KedgeError
from kedge.runtime.inputs.folders import LabelledImage
from kedge.runtime.inputs.preprocess import PREPROCESS_VERSION, preprocess
from kedge.runtime.inputs.sources import SourceSpec, labelled_items


@dataclass
class Sample:
    item: LabelledImage
    split: str
    features: np.ndarray


def split_samples(bundle: Bundle, data: str | os.PathLike[str], spec: SourceSpec,
                  progress: bool = True) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Every image of `data` that the bundle's split.csv assigns to train, val or test,
    with its features; and the (path, problem) of those that could not be read."""
    if not bundle.has("split_manifest"):
        raise KedgeError(f"{bundle.path}: no split.csv, so no training split to fit the envelope on")
    assigned = bundle.split
    root = Path(data)
    items = [(i, assigned.get(i.path.relative_to(root).as_posix()))
             for i in labelled_items(bundle, data, None, spec)]
    items = [(i, s) for i, s in items if s in SPLITS]
    if not items:
        raise KedgeError(f"{data}: none of its images is in {bundle.path}'s split.csv (is --data the folder the "
                         "model was trained on?)")
    samples, failures = [], []
    for item, split in tqdm(items, desc="Reading images", unit="img", disable=None if progress else True,
                            leave=False):
        try:
            samples.append(Sample(item, split, env.image_features(preprocess(item.path))))
        except ImageError as err:
            failures.append((str(item.path), err.problem))
    return samples, failures


def choose_validated(bundle: Bundle, given: Sequence[str] | None,
                     present: Sequence[str]) -> tuple[list[str], str, dict[str, Any]]:
    """(validated sources, how they were chosen, the rule's row per source)."""
    rule = env.validated_sources(bundle.section("metrics").get("test", {}))
    if given:
        unknown = [s for s in given if s not in present]
        if unknown:
            raise KedgeError(f"--validated {','.join(given)}: no image of source {', '.join(unknown)} in the split "
                             f"(sources: {', '.join(sorted(present))})")
        return list(given), "--validated", rule
    if not rule:
        raise KedgeError(f"{bundle.path}: kedge.json has no per-source test metrics, so no source can be called "
                         "validated; name them with --validated")
    chosen = [name for name, row in rule.items() if row["validated"] and name in present]
    if not chosen:
        raise KedgeError(f"{bundle.path}: no source is validated by its test metrics ("
                         + "; ".join(f"{n}: {r['why']}" for n, r in rule.items())
                         + "); a model validated on nothing has no envelope (--validated overrides)")
    return chosen, "rule: 95 % Wilson lower bound of per-source test balanced accuracy above chance", rule


def fit_bundle(bundle: Bundle, samples: Sequence[Sample], validated: Sequence[str], chosen_by: str,
               rule: dict[str, Any], components: int = env.COMPONENTS, keep: float = env.KEEP) -> env.Envelope:
    def pick(split: str) -> list[Sample]:
        return [s for s in samples if s.split == split and s.item.source in validated]

    train, val = pick("train"), pick("val")
    record = {"model": bundle.name, "preprocessing": PREPROCESS_VERSION, "validated": list(validated),
              "validated_by": chosen_by, "rule": rule,
              "fitted_on": {"split": "train", "n": len(train), "by_source": _count(train)},
              "thresholded_on": {"split": "val", "n": len(val), "by_source": _count(val)}}
    envelope = env.fit(np.stack([s.features for s in train]) if train else np.zeros((0, env.FEATURE_LENGTH)),
                       [s.item.source for s in train],
                       np.stack([s.features for s in val]) if val else np.zeros((0, env.FEATURE_LENGTH)),
                       validated, components, keep, record)
    envelope.record["held_out"] = held_out(envelope, samples)
    return envelope


def _count(samples: Sequence[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.item.source] = counts.get(s.item.source, 0) + 1
    return dict(sorted(counts.items()))


def held_out(envelope: env.Envelope, samples: Sequence[Sample]) -> dict[str, Any]:
    """Per source, the share outside on images the fit never used: the test split of a
    validated source; every split of an unvalidated one (the fit saw none of them)."""
    result: dict[str, Any] = {}
    for source in sorted({s.item.source for s in samples}):
        validated = source in envelope.validated
        chosen = [s for s in samples if s.item.source == source and (s.split == "test" or not validated)]
        if not chosen:
            continue
        checks = envelope.check_features(np.stack([s.features for s in chosen]))
        outside = sum(not c.inside for c in checks)
        result[source] = {"validated": validated, "splits": "test" if validated else "train, val, test",
                          "n": len(chosen), "outside": outside, "outside_share": round(outside / len(chosen), 4)}
    return result


def store(bundle: Bundle, envelope: env.Envelope) -> None:
    """Write envelope.json atomically and record it (with its sha256) in kedge.json."""
    atomic_write_text(bundle.path / env.FILE_NAME, env.dumps(envelope))
    bundle.update(artifacts={**bundle.artifacts, env.ARTIFACT: env.FILE_NAME}, envelope=summary(envelope))


def summary(envelope: env.Envelope) -> dict[str, Any]:
    """What kedge.json (and the card) says about the envelope."""
    record = envelope.record
    return {"file": env.FILE_NAME, "validated": envelope.validated, "validated_by": record.get("validated_by"),
            "features": f"image statistics v{env.FEATURES_VERSION} (16x16 thumbnail, 32-bin histogram, gradient "
                        "and Laplacian energies), standardised, PCA, Mahalanobis distance",
            "rule": {name: row["validated"] for name, row in (record.get("rule") or {}).items()},
            "components": int(len(envelope.spread)), "threshold": round(envelope.threshold, 4),
            "keep": record.get("keep"), "fitted_on": record.get("fitted_on"),
            "thresholded_on": record.get("thresholded_on"), "held_out": record.get("held_out")}


def fit_and_store(path: str | os.PathLike[str], data: str | os.PathLike[str], spec: SourceSpec,
                  validated: Sequence[str] | None = None, components: int = env.COMPONENTS, keep: float = env.KEEP,
                  write: bool = True, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> tuple[env.Envelope, list[Sample], dict[str, Any]]:
    """`kedge envelope`: fit from the bundle's split, store it unless `write` is False."""
    if not 0.5 <= keep < 1:
        raise KedgeError(f"--keep {keep}: give the share of validation images to keep inside, e.g. 0.95")
    bundle = load_bundle(path)
    samples, failures = split_samples(bundle, data, spec, progress)
    if failures:
        path_, problem = failures[0]
        raise KedgeError(f"{path_}: {problem} ({len(failures)} unreadable image(s); the envelope is fitted on all "
                         "of the split or not at all)")
    present = sorted({s.item.source for s in samples})
    chosen, chosen_by, rule = choose_validated(bundle, validated, present)
    envelope = fit_bundle(bundle, samples, chosen, chosen_by, rule, components, keep)
    if write:
        store(bundle, envelope)
        if log is not None:
            log(f"{bundle.name}: wrote {bundle.path / env.FILE_NAME} and recorded it in {bundle.path / 'kedge.json'}")
    return envelope, samples, {"bundle": str(bundle.path), "model": bundle.name, **summary(envelope),
                               "written": write}
