"""From a class-per-folder tree to seeded, stratified, duplicate-safe splits.

Steps: scan the folder (kedge.runtime.folders), fingerprint every image through the
runtime's preprocessing (unreadable files are excluded and reported, not fatal),
group duplicates, drop groups whose labels conflict, keep one file per set of
byte-identical copies, then split whole groups per class so that each split keeps the
class mix. The result is written as split.csv, and read back by `kedge evaluate --split`.
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kedge.runtime.bundle import atomic_write_text
from kedge.runtime.errors import ImageError, KedgeError
from kedge.runtime.folders import LabelledImage, read_split_manifest, scan_labelled  # noqa: F401 (re-export)
from kedge.train.dedup import duplicate_groups, fingerprint

SPLITS = ("train", "val", "test")
MANIFEST_FIELDS = ("path", "class", "split", "group", "sha256", "note")


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

    def summary(self) -> dict[str, object]:
        counts = {s: dict(Counter(e.item.class_name for e in self.entries if e.split == s)) for s in SPLITS}
        excluded = Counter(e.note.split(":")[0] for e in self.entries if e.split == "excluded")
        return {"root": str(self.root), "counts": counts, "excluded": dict(excluded),
                "groups": len({e.group for e in self.entries if e.group >= 0})}


def prepare(
    root: str | os.PathLike[str],
    classes: Sequence[str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    progress: bool = True,
) -> PreparedData:
    """Scan, fingerprint, de-duplicate and split a labelled folder."""
    root = Path(root)
    entries = [Entry(item, item.path.relative_to(root).as_posix()) for item in scan_labelled(root, classes)]
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
    _split_groups(kept, len(classes), fractions, seed)
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


def _split_groups(entries: list[Entry], n_classes: int, fractions: tuple[float, float, float], seed: int) -> None:
    """Assign whole groups to train/val/test, class by class, to the given fractions."""
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise KedgeError(f"split fractions {fractions} must be non-negative and sum to 1")
    rng = np.random.default_rng(seed)
    for label in range(n_classes):
        groups: dict[int, list[Entry]] = defaultdict(list)
        for entry in entries:
            if entry.item.label == label:
                groups[entry.group].append(entry)
        order = [groups[g] for g in sorted(groups)]
        rng.shuffle(order)  # type: ignore[arg-type]
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
        writer.writerow({"path": e.relative, "class": e.item.class_name, "split": e.split,
                         "group": e.group, "sha256": e.sha256, "note": e.note})
    atomic_write_text(path, buffer.getvalue())


def tf_dataset(
    items: Sequence[LabelledImage],
    batch_size: int,
    *,
    training: bool,
    seed: int,
    augment: bool = True,
    cache_limit_bytes: int = 3 << 30,
):  # -> tf.data.Dataset
    """Batches of (image, label) read with the runtime's `preprocess`, cached in memory
    when they fit; the training part is shuffled and (optionally) augmented."""
    from kedge.runtime.preprocess import INPUT_SHAPE, preprocess
    from kedge.train.tfkeras import keras, tensorflow

    tf = tensorflow()
    paths = [str(i.path) for i in items]
    labels = np.array([i.label for i in items], dtype=np.int32)

    def load(path: bytes) -> np.ndarray:
        return preprocess(path.decode())

    def load_tf(path, label):  # type: ignore[no-untyped-def]
        image = tf.numpy_function(load, [path], tf.float32, stateful=False)
        return tf.ensure_shape(image, INPUT_SHAPE), label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels)).map(load_tf, num_parallel_calls=tf.data.AUTOTUNE)
    if len(items) * int(np.prod(INPUT_SHAPE)) * 4 <= cache_limit_bytes:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(len(items), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if training and augment:
        augmenter = augmentation(keras(), seed)
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def augmentation(keras, seed: int):  # type: ignore[no-untyped-def]
    """The papers' augmentation: horizontal flips (left/right knee), shifts up to 10 %,
    rotations up to 10 degrees. Vertical flips are left out: no radiograph is upside down."""
    layers = keras.layers
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 1),
            layers.RandomRotation(10 / 360, fill_mode="reflect", seed=seed + 2),
        ],
        name="augmentation",
    )
