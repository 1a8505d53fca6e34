"""What a valid kedge.json looks like, checked when a bundle is opened, before any of it is used.

Why: a manifest is read from disk, so it may be damaged or hostile. A wrong type or a
missing key must be one line, not a traceback deep in inference; a model file must
never be loaded unless the manifest lists it with its sha256; and no path in it may
lead outside the bundle (an absolute path, `..`, or a symlink out). The rules are
small and fixed, so they are written out here rather than pulled in as a JSON-Schema
dependency on the device.
"""
from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from kedge.runtime.errors import KedgeError

SPLITS = ("train", "val", "test")  # the splits of a bundle's split.csv (train/data.py draws them)

SCHEMA_VERSION = 1
PREPROCESS_VERSIONS = ("1", "2")  # every preprocessing contract this runtime implements
MAX_MANIFEST_BYTES = 8 << 20
MAX_DEPTH = 32  # kedge writes at most 6 levels; deeper is refused before parsing recurses
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PATH_TABLES = ("artifacts", "engines")  # manifest tables whose values are files the bundle uses


def parse_manifest(text: str, where: Path) -> dict[str, Any]:
    """JSON text to a dict: too deep, repeated keys or not an object are one-line errors."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise KedgeError(f"{where}: manifest is over {MAX_MANIFEST_BYTES >> 20} MiB")
    if _nesting(text) > MAX_DEPTH:
        raise KedgeError(f"{where}: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, object_pairs_hook=_no_repeats)
    except (json.JSONDecodeError, RecursionError) as err:
        raise KedgeError(f"{where}: not valid JSON ({getattr(err, 'msg', type(err).__name__)})") from None
    except ValueError as err:
        raise KedgeError(f"{where}: {err}") from None
    if not isinstance(data, dict):
        raise KedgeError(f"{where}: the manifest must be a JSON object")
    return data


def _nesting(text: str) -> int:
    """Deepest bracket nesting outside strings (a cheap scan; json.loads would recurse)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice in one JSON object")
    return dict(pairs)


def validate(manifest: dict[str, Any], folder: Path, where: Path) -> None:
    """Raise a one-line KedgeError for the first thing wrong with a parsed manifest."""
    def fail(problem: str) -> KedgeError:
        return KedgeError(f"{where}: {problem}")

    schema = manifest.get("schema")
    if type(schema) is not int or schema != SCHEMA_VERSION:  # `true` == 1 in Python: check the type
        raise fail(f"unsupported manifest schema {repr(schema)[:40]} (expected {SCHEMA_VERSION})")
    model = _table(manifest, "model", fail)
    if not isinstance(model.get("name"), str) or not _NAME.fullmatch(model["name"]):
        raise fail("model.name must be a short name (letters, digits, '.', '_', '-')")
    classes = model.get("classes")
    if (not isinstance(classes, list) or len(classes) < 2
            or not all(isinstance(c, str) and c.strip() and len(c) <= 64 for c in classes)):
        raise fail("model.classes must be a list of at least two class names")
    if len({c.lower() for c in classes}) != len(classes):
        raise fail("model.classes names a class twice")
    if not all(c.isprintable() for c in classes):  # printed in every answer: a newline or ESC would forge output
        raise fail("model.classes: a class name holds a control character; refused")
    shape = _table(manifest, "input", fail).get("shape")
    if not isinstance(shape, list) or len(shape) != 4 or shape[1:] != [224, 224, 3]:
        raise fail("input.shape must be [batch, 224, 224, 3]")
    version = _table(manifest, "preprocessing", fail).get("version")
    if version not in PREPROCESS_VERSIONS:
        raise fail(f"unknown preprocessing version (this kedge knows {', '.join(PREPROCESS_VERSIONS)})")
    files = _table(manifest, "files", fail, required=False)
    for relative, digest in files.items():
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise fail(f"files: the sha256 of {relative!r} is not 64 hex digits")
    for table in PATH_TABLES:
        for key, relative in _table(manifest, table, fail, required=False).items():
            if not isinstance(relative, str):
                raise fail(f"{table}.{key} must be a path")
            check_inside(folder, relative, where)
            if relative not in files:
                raise fail(f"{table}.{key} ({relative}) has no sha256 in files; refused")
    for table in ("parity", "shipped", "exports", "calibration", "card", "training", "metrics", "golden"):
        _table(manifest, table, fail, required=False)
    _check_parity_rows(_table(manifest, "parity", fail, required=False), fail)
    _check_golden(_table(manifest, "golden", fail, required=False), fail)


# The fields of a parity row that `auto` and the reports act on, with their JSON types.
# bool is checked exactly: "false" (a string) or 0 must never count as passed.
PARITY_ROW_TYPES: dict[str, tuple[type, ...]] = {
    "form": (str,), "backend": (str,), "precision": (str,), "passed": (bool,),
}
PARITY_ROW_OPTIONAL: dict[str, tuple[type, ...]] = {  # checked when present
    "n": (int,), "agreement": (int, float), "max_abs_diff": (int, float), "mean_abs_diff": (int, float),
    "accuracy": (int, float), "macro_f1": (int, float), "near_ties": (int,), "reference": (bool,),
    "file_sha256": (str,), "problems": (list,), "runner": (str,),
}


def _check_parity_rows(parity: dict[str, Any], fail: Any) -> None:
    rows = parity.get("rows", [])
    if not isinstance(rows, list):
        raise fail("parity.rows must be a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise fail(f"parity.rows[{i}] must be a JSON object")
        typed = {**PARITY_ROW_TYPES, **{k: t for k, t in PARITY_ROW_OPTIONAL.items() if row.get(k) is not None}}
        for key, types in typed.items():
            value = row.get(key)
            if type(value) not in types:
                raise fail(f"parity.rows[{i}].{key} must be {' or '.join(t.__name__ for t in types)}, "
                           f"not {type(value).__name__}")


def _check_golden(golden: dict[str, Any], fail: Any) -> None:
    """The golden set's fields that regenerating and comparing it read, with their types,
    so a damaged set is one line at load, not a KeyError when a pair is checked."""
    if not golden:
        return
    for key, types in (("version", (int,)), ("seed", (int,)), ("size", (int,)), ("reference", (str,)),
                       ("densities", (list,)), ("pixel_sha256", (list,)), ("outputs", (dict,))):
        if type(golden.get(key)) not in types:
            raise fail(f"golden.{key} must be {types[0].__name__}")
    n = len(golden["densities"])
    if not all(type(d) in (int, float) for d in golden["densities"]) or len(golden["pixel_sha256"]) != n \
            or not all(isinstance(h, str) for h in golden["pixel_sha256"]):
        raise fail("golden.densities and golden.pixel_sha256 must be lists of numbers and hashes of one length")
    if golden["version"] >= 2 and (not isinstance(golden.get("indices"), list) or len(golden["indices"]) != n
                                   or not all(type(i) is int for i in golden["indices"])):
        raise fail("golden.indices must be a list of integers, one per image")
    if golden["reference"] not in golden["outputs"]:
        raise fail("golden.outputs has no outputs of its reference")
    for form, rows in golden["outputs"].items():
        if (not isinstance(rows, list) or len(rows) != n
                or not all(isinstance(r, list) and all(type(v) in (int, float) for v in r) for r in rows)):
            raise fail(f"golden.outputs.{form} must hold one list of probabilities per golden image")
    files = golden.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise fail("golden.files must map forms to sha256 strings")


def _table(manifest: dict[str, Any], key: str, fail: Any, required: bool = True) -> dict[str, Any]:
    value = manifest.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise fail(f"{key} must be a JSON object" if key in manifest else f"{key} is missing")
    return value


def check_inside(folder: Path, relative: str, where: Path | str) -> Path:
    """folder/relative, refused unless it is a plain relative path that stays in the folder
    once symlinks are followed."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or "\\" in relative or "\0" in relative:
        raise KedgeError(f"{where}: path {relative!r} must be relative and inside the bundle")
    path = folder / pure
    try:
        inside = _within(path.resolve(), folder.resolve())
    except (OSError, RuntimeError):  # a symlink loop: RuntimeError up to Python 3.12, OSError (ELOOP) after
        raise KedgeError(f"{where}: path {relative!r} is a symlink loop; refused") from None
    if not inside:
        raise KedgeError(f"{where}: path {relative!r} leads outside the bundle (symlink); refused")
    return path


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents

