"""Find images on disk: labelled class-per-folder trees (the Kaggle layout) and loose files.

Class folders match class names case-insensitively ("normal", "NORMAL" and "Normal"
are one class), and results are sorted, so every run sees the same order.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kedge.runtime.errors import KedgeError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})


def file_format(path: Path) -> str:
    """File format by extension, for per-format metrics ("jpeg", "png", ...)."""
    suffix = path.suffix.lower().lstrip(".")
    return {"jpg": "jpeg", "tif": "tiff", "dicom": "dcm"}.get(suffix, suffix) or "none"


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int  # index into the class list
    class_name: str
    source: str = "all"  # where the image came from (kedge.runtime.inputs.sources); "all" when unknown

    @property
    def format(self) -> str:
        return file_format(self.path)


def parse_classes(text: str) -> list[str]:
    """'Normal, Osteoporosis' -> ['Normal', 'Osteoporosis'], refusing empties and repeats."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise KedgeError(f"--classes {text!r}: empty class name")
    if len({n.lower() for n in names}) != len(names):
        raise KedgeError(f"--classes {text!r}: a class is named twice")
    if len(names) < 2:
        raise KedgeError(f"--classes {text!r}: need at least two classes")
    if not all(n.isprintable() for n in names):  # a bundle refuses such names when loaded (runtime/bundle/schema.py)
        raise KedgeError(f"--classes {text!r}: a class name holds a control character")
    return names


def is_image_file(path: Path) -> bool:
    """An image by its extension, or an extensionless DICOM (IM0001) by its DICM marker at byte 128.
    Only regular files count: a FIFO or device in a folder is never opened."""
    if path.name.startswith(".") or not path.is_file():
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    return not path.suffix and _has_dicom_marker(path)


def _has_dicom_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def class_trees(root: Path, classes: Sequence[str]) -> list[Path]:
    """The class-per-folder trees under root: root itself when it holds a class folder,
    else each direct subfolder that does (e.g. data/{knee-3class,knee-fullres}/<class>/)."""
    wanted = {c.lower() for c in classes}

    def holds_class(folder: Path) -> bool:
        return any(p.is_dir() and p.name.lower() in wanted for p in folder.iterdir())

    if holds_class(root):
        return [root]
    return [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and holds_class(p)]


def scan_labelled(root: str | os.PathLike[str], classes: Sequence[str]) -> list[LabelledImage]:
    """List the images of `classes` under root/<class>/ (recursively), label = class index.

    A root may also hold several such trees side by side (one per resolution or
    collection); all are read. Folders for other classes are ignored; a class with no
    image in any tree is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise KedgeError(f"{root}: no such data folder")
    trees = class_trees(root, classes)
    if not trees:
        found = ", ".join(p.name for p in sorted(root.iterdir()) if p.is_dir()) or "none"
        raise KedgeError(f"{root}: no class folder ({', '.join(classes)}) in it or in its subfolders "
                         f"(folders found: {found})")
    images: list[LabelledImage] = []
    for label, name in enumerate(classes):
        folders = [p for tree in trees for p in sorted(tree.iterdir()) if p.is_dir() and p.name.lower() == name.lower()]
        if not folders:
            found = ", ".join(sorted({p.name for t in trees for p in t.iterdir() if p.is_dir()})) or "none"
            raise KedgeError(f"{root}: no folder for class {name!r} (class folders found: {found})")
        files = [p for folder in folders for p in folder.rglob("*") if is_image_file(p)]
        if not files:
            raise KedgeError(f"{', '.join(map(str, folders))}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        images.extend(LabelledImage(p, label, name) for p in sorted(files, key=lambda p: p.as_posix()))
    return images


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders searched recursively for images, and glob patterns expanded.

    A path that does not exist and matches nothing is returned as is, so the caller
    reports it per file ("file not found") instead of silently dropping it. A model
    bundle given as an input folder is refused: its plots are not knees.
    """
    import glob

    found: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir() and os.path.lexists(path / "kedge.json"):
            raise KedgeError(f"{path}: a model bundle, not a folder of images (pass it as --model {path})")
        if path.is_dir():
            found.extend(sorted((p for p in path.rglob("*") if is_image_file(p)), key=lambda p: p.as_posix()))
        elif not path.exists() and any(char in str(raw) for char in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(str(raw), recursive=True)) if is_image_file(Path(m))]
            found.extend(matches or [path])  # a pattern that matches nothing is reported like a missing file
        else:
            found.append(path)
    return list(dict.fromkeys(found))  # drop repeats, keep order


def read_split_manifest(path: str | os.PathLike[str]) -> dict[str, str]:
    """A bundle's split.csv: relative path -> split name (train, val, test or excluded)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return {row["path"]: row["split"] for row in csv.DictReader(handle)}
    except (OSError, KeyError) as err:
        raise KedgeError(f"{path}: cannot read split manifest ({err})") from None


def in_split(items: Sequence[LabelledImage], root: str | os.PathLike[str], assigned: dict[str, str],
             split: str) -> list[LabelledImage]:
    """The items that a split manifest put in `split`; an error if there are none."""
    chosen = [i for i in items if assigned.get(i.path.relative_to(root).as_posix()) == split]
    if not chosen:
        raise KedgeError(f"{root}: no image of this folder is in the bundle's {split} split "
                         "(is it the folder the bundle was trained on?)")
    return chosen


def read_split_sources(path: str | os.PathLike[str]) -> dict[str, str]:
    """A bundle's split.csv: relative path -> source ({} for bundles written before sources)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return {row["path"]: row["source"] for row in csv.DictReader(handle) if row.get("source")}
    except (OSError, KeyError) as err:
        raise KedgeError(f"{path}: cannot read split manifest ({err})") from None
