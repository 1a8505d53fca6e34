"""From a class-per-folder tree to seeded, stratified, duplicate-safe splits.

Steps: scan the folder (kedge.runtime.inputs.folders), fingerprint every image through the
runtime's preprocessing (unreadable files are excluded and reported, not fatal),
group duplicates, drop groups whose labels conflict, keep one file per set of
byte-identical copies, then split whole groups per (source, class) so that each split
keeps the class mix of every source. The result is written as split.csv (with each
file's source), and read back by `kedge evaluate --split` and `kedge audit`.
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kedge.runtime.bundle.manifest import atomic_write_text
from kedge.runtime.bundle.schema import SPLITS
from kedge.runtime.errors import ImageError, KedgeError
from kedge.runtime.inputs.folders import LabelledImage, read_split_manifest, scan_labelled  # noqa: F401 (re-export)
from kedge.runtime.inputs.sources import SourceSpec, class_mix, mix_warnings, with_sources
from kedge.train.dedup import duplicate_groups, fingerprint

MANIFEST_FIELDS = ("path", "class", "source", "split", "group", "sha256", "note")


@dataclass
class Entry:
    item: LabelledImage
    relative: str  # posix path relative to the data root
    split: str = "excluded"
    group: int = -1
    sha256: str = ""
    note: str = ""


@dataclass
class PreparedData:
    root: Path
    classes: list[str]
    entries: list[Entry]

    def items(self, split: str) -> list[LabelledImage]:
        return [e.item for e in self.entries if e.split == split]

    @property
    def sources(self) -> list[str]:
        return sorted({e.item.source for e in self.entries})

    def summary(self) -> dict[str, Any]:
        counts = {s: dict(Counter(e.item.class_name for e in self.entries if e.split == s)) for s in SPLITS}
        excluded = Counter(e.note.split(":")[0] for e in self.entries if e.split == "excluded")
        by_source = {s: class_mix(self.items(s), self.classes) for s in SPLITS}
        return {"root": str(self.root), "counts": counts, "counts_by_source": by_source,
                "excluded": dict(excluded), "groups": len({e.group for e in self.entries if e.group >= 0})}


def prepare(
    root: str | os.PathLike[str],
    classes: Sequence[str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    progress: bool = True,
    sources: SourceSpec | None = None,
) -> PreparedData:
    """Scan, fingerprint, de-duplicate and split a labelled folder."""
    root = Path(root)
    items = with_sources(scan_labelled(root, classes), root, sources or SourceSpec())
    entries = [Entry(item, item.path.relative_to(root).as_posix()) for item in items]
    usable: list[Entry] = []
    prints = []
    for entry in tqdm(entries, desc="Checking images", unit="img", disable=None if progress else True, leave=False):
        try:
            fp = fingerprint(str(entry.item.path))
        except ImageError as err:
            entry.note = f"unreadable: {err.problem}"
            continue
        entry.sha256 = fp.sha256
        usable.append(entry)
        prints.append(fp)
    for entry, group in zip(usable, duplicate_groups(prints), strict=True):
        entry.group = group
    _exclude_duplicates(usable)
    kept = [e for e in usable if not e.note]
    if not kept:
        raise KedgeError(f"{root}: no usable images left after checks and de-duplication")
    _split_groups(kept, fractions, seed)
    return PreparedData(root, list(classes), entries)


def _exclude_duplicates(entries: list[Entry]) -> None:
    """Drop groups with conflicting labels; keep one file of byte-identical copies."""
    members: dict[int, list[Entry]] = defaultdict(list)
    for entry in entries:
        members[entry.group].append(entry)
    for group in members.values():
        labels = {e.item.class_name for e in group}
        if len(labels) > 1:
            for entry in group:
                entry.note = f"conflicting labels: the same radiograph is labelled {' and '.join(sorted(labels))}"
            continue
        first_by_sha: dict[str, Entry] = {}
        for entry in group:
            if entry.sha256 in first_by_sha:
                entry.note = f"exact copy: same bytes as {first_by_sha[entry.sha256].relative}"
            else:
                first_by_sha[entry.sha256] = entry


def _split_groups(entries: list[Entry], fractions: tuple[float, float, float], seed: int) -> None:
    """Assign whole duplicate groups to train/val/test, stratum by stratum (source, class),
    to the given fractions. A group belongs to the stratum of its first member."""
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise KedgeError(f"split fractions {fractions} must be non-negative and sum to 1")
    rng = np.random.default_rng(seed)
    members: dict[int, list[Entry]] = defaultdict(list)
    for entry in entries:
        members[entry.group].append(entry)
    strata: dict[tuple[str, int], list[int]] = defaultdict(list)
    for group_id, group_entries in sorted(members.items()):
        strata[(group_entries[0].item.source, group_entries[0].item.label)].append(group_id)
    for stratum in sorted(strata):
        order = [members[g] for g in strata[stratum]]
        rng.shuffle(order)
        total = sum(len(g) for g in order)
        want_test, want_val = round(total * fractions[2]), round(total * fractions[1])
        taken = {"test": 0, "val": 0}
        for group in order:
            if taken["test"] < want_test:
                split = "test"
            elif taken["val"] < want_val:
                split = "val"
            else:
                split = "train"
            taken[split] = taken.get(split, 0) + len(group)
            for entry in group:
                entry.split = split


def write_split_manifest(path: str | os.PathLike[str], data: PreparedData) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for e in data.entries:
        writer.writerow({"path": e.relative, "class": e.item.class_name, "source": e.item.source, "split": e.split,
                         "group": e.group, "sha256": e.sha256, "note": e.note})
    atomic_write_text(path, buffer.getvalue())


def dataset_report(data: PreparedData) -> dict[str, Any]:
    """What `kedge dataset` reports: the split's summary, each source's class mix over the kept
    images, what in that mix lets a model learn the source, and every excluded file with why."""
    mix = class_mix([e.item for e in data.entries if e.split != "excluded"], data.classes)
    excluded = [{"path": e.relative, "class": e.item.class_name, "reason": e.note}
                for e in data.entries if e.split == "excluded"]
    return {**data.summary(), "class_mix_by_source": mix, "warnings": mix_warnings(mix), "excluded_files": excluded}


def format_dataset_report(data: PreparedData, report: dict[str, Any]) -> str:
    """dataset_report as a table: counts per split and class, then per source, warnings and exclusions."""
    classes, mix = data.classes, report["class_mix_by_source"]
    lines = [f"{data.root}: {len(data.entries)} images, {report['groups']} distinct radiographs",
             f"  {'split':<8}" + "".join(f"{c:>14}" for c in classes)]
    for split in SPLITS:
        counts = report["counts"][split]
        lines.append(f"  {split:<8}" + "".join(f"{counts.get(c, 0):>14}" for c in classes))
    if len(mix) > 1:
        lines.append(f"  {'source':<8}" + "".join(f"{c:>14}" for c in classes) + "   (all splits)")
        for source, source_counts in mix.items():
            lines.append(f"  {source[:8]:<8}" + "".join(f"{source_counts[c]:>14}" for c in classes))
    else:
        lines.append("  sources: none given (--sources or --source-rule): no per-source check")
    lines += [f"  warning: {warning}" for warning in report["warnings"]]
    lines += [f"  excluded {row['path']}: {row['reason']}" for row in report["excluded_files"]]
    return "\n".join(lines)
