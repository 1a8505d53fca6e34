"""Package a trained, exported bundle for shipping inside kedge: chosen forms only,
plus the model card.

The shipped copy keeps the full manifest (training, metrics, calibration, parity), so
it stays a model card, but its `artifacts` and `files` list only what it carries.
Forms left behind are recorded with their sha256 and size under `shipped.left_out`,
so a user can tell which file a left-out form would have to match. Any path of the
exporting machine that an older manifest still records becomes a name, or a path
relative to its data folder (`portable`).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from kedge.runtime.bundle.forms import form as form_spec
from kedge.runtime.bundle.manifest import Bundle, new_bundle, portable_path, staged_folder
from kedge.runtime.errors import KedgeError

# Small files that carry provenance (and let a device rebuild INT8 engines from a shipped FP32 ONNX),
# and the input envelope (envelope.json) that `kedge infer` gates on.
ALWAYS = ("split_manifest", "history", "curves", "confusion_matrix", "calibration_ranges", "trt_calibration_cache",
          "envelope")

LIMITATIONS = [
    "Research use only, not a diagnostic device.",
    "Trained on a small public set (a few hundred de-duplicated knee radiographs) with noisy labels; expect the "
    "accuracy to move by several points between splits (see the 95 % intervals).",
    "Class and file source are confounded in the public data: every Osteopenia image is a JPEG, and many Normal and "
    "Osteoporosis images are PNGs from a second source. Metrics per source and per file format are reported for "
    "that reason, and `kedge audit` checks a model for answers that follow the source.",
    "Not validated on any clinic's images, scanners or population.",
]


def ship_bundle(bundle: Bundle, dest: str | os.PathLike[str], forms: list[str],
                overwrite: bool = False, data_source: str | None = None) -> Bundle:
    """Copy `forms` (e.g. onnx-fp32, onnx-int8) and the provenance files of `bundle` to
    `dest`, with the model card sections; returns the shipped bundle. `data_source`
    describes where the training images came from, for the card."""
    artifacts = bundle.artifacts
    keys = [_artifact(f) for f in forms]
    missing = [f for f, k in zip(forms, keys, strict=True) if k not in artifacts]
    if missing:
        raise KedgeError(f"{bundle.path}: has no {', '.join(missing)}; run `kedge export` first")
    parity = bundle.parity
    if not parity:
        raise KedgeError(f"{bundle.path}: no parity record; run `kedge parity` on the test split before shipping")
    rows: dict[str, dict[str, Any]] = {}  # per form: a row that passed, else the last that failed
    for row in parity["rows"]:
        if row["form"] not in rows or not rows[row["form"]]["passed"]:
            rows[row["form"]] = row
    unchecked = [f for f in forms if f != parity["reference"] and f not in rows]
    failed = [f for f in forms if f in rows and f != parity["reference"] and not rows[f]["passed"]]
    if unchecked or failed:
        raise KedgeError(f"{bundle.path}: only forms that passed parity ship; "
                         + "; ".join([*(f"{f} was not checked" for f in unchecked),
                                      *(f"{f} FAILED ({'; '.join(rows[f]['problems'])})" for f in failed)]))
    shipped = {k: artifacts[k] for k in (*keys, *ALWAYS) if k in artifacts}
    left_out = {k: {"file": rel, "sha256": bundle.files.get(rel),
                    "bytes": (bundle.path / rel).stat().st_size if (bundle.path / rel).is_file() else None}
                for k, rel in artifacts.items() if k not in shipped}
    with staged_folder(dest, overwrite) as stage:
        for key, rel in shipped.items():
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.file(key), target)  # bundle.file checks the sha256 on the way
        manifest = {k: v for k, v in bundle.manifest.items() if k not in ("files", "schema")}
        manifest["artifacts"] = shipped
        manifest["shipped"] = {"forms": forms, "left_out": left_out,
                               "bytes": sum((stage / rel).stat().st_size for rel in shipped.values())}
        manifest["card"] = {"limitations": _limitations(bundle), "training_data": _training_data(bundle, data_source)}
        portable_manifest = portable(manifest, *_data_folders(bundle))
        if data_source:  # the person's own words, kept as written: a "(../shared/data)" in them is no machine path
            portable_manifest["card"]["training_data"]["source"] = data_source
        shipped_manifest = new_bundle(stage, portable_manifest).manifest
    return Bundle(Path(dest), shipped_manifest)


# A path of the machine that wrote a string: absolute (POSIX, Windows drive, home) or going up
# from a working folder (../shared/data), where it begins a word, up to a space, quote or bracket.
MACHINE_PATH = re.compile(r"(?<![\w.~/:\\-])(?:[A-Za-z]:[\\/]|~/|\.\.?/|/)(?=[\w.~-])[^\s'\"(),;]*")
# Keys whose values are never a folder of the exporting machine: the bundle's own relative
# files, graph node and tensor names and patterns of them, source rules (a regex may hold a
# slash), and the rebuild record (its recipe and commands name the default relative folders on purpose).
NOT_PATHS = frozenset({"files", "artifacts", "nodes", "patterns", "kept_in_float", "started_with", "worst", "rule",
                       "rebuild"})


def _data_folders(bundle: Bundle) -> list[str]:
    """The --data folders a manifest recorded as machine paths (older kedge versions did):
    the roots that other recorded paths (sources file, calibration folder, unreadable
    images) are made relative to, as kedge now records them."""
    training = bundle.section("training")
    found = (training.get("data"), training.get("dataset", {}).get("root"), bundle.parity.get("data"))
    return [f for f in found if isinstance(f, str) and MACHINE_PATH.fullmatch(f)]


def portable(value: Any, *roots: str) -> Any:
    """A copy of a JSON value with every machine path in its strings made portable
    (runtime.bundle.manifest.portable_path: relative to the longest root holding it, else its name),
    so no folder of the exporting machine reaches a shipped kedge.json."""
    if isinstance(value, dict):
        return {k: v if k in NOT_PATHS else portable(v, *roots) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, *roots) for v in value]
    if isinstance(value, str):
        return MACHINE_PATH.sub(lambda m: _portable_token(m.group(), roots), value)
    return value


def _portable_token(token: str, roots: tuple[str, ...]) -> str:
    path = token.rstrip(".:")  # the end of a sentence, not of the path
    return portable_path(path, *roots) + token[len(path):]


def _limitations(bundle: Bundle) -> list[str]:
    from kedge.runtime.reports.evaluate import NOT_VALIDATED_MARGIN, not_validated

    items = list(LIMITATIONS)
    test = bundle.section("metrics").get("test", {})
    for name in not_validated(test):
        row = test["by_source"][name]
        items.insert(1, f"NOT VALIDATED for images like source {name}'s: on the test split its balanced accuracy is "
                        f"{row['balanced_accuracy']:.2f}, within {NOT_VALIDATED_MARGIN:.2f} of chance "
                        f"({row['chance']:.2f}), n={row['n']}.")
    if not test.get("by_source"):
        items.insert(1, "No sources were given in training: no per-source check was possible.")
    if bundle.section("model").get("options", {}).get("weights") == "none":
        items.insert(2, "The ResNet50 backbone started from random weights (ImageNet weights could not be "
                        "downloaded where it was trained); the paper used a pretrained backbone.")
    return items


def _artifact(name: str) -> str:
    spec = form_spec(name)
    if spec.artifact is None:
        raise KedgeError(f"{name}: engines are built on the device that runs them, not shipped")
    return spec.artifact


def _training_data(bundle: Bundle, data_source: str | None) -> dict[str, Any]:
    dataset = bundle.section("training").get("dataset", {})
    return {
        "source": data_source or f"the labelled folder {dataset.get('root')} (no description given)",
        "folder": dataset.get("root"),
        "counts": dataset.get("counts"),
        "deduplication": "byte-identical copies (sha256) and re-encoded/resized copies (DCT perceptual hash, "
                         "confirmed by thumbnail correlation >= 0.995); each duplicate group kept inside one split; "
                         f"{dataset.get('groups')} groups; excluded: {dataset.get('excluded') or 'none'}",
        "split": "seeded, stratified by (source, class), 70/15/15 of duplicate groups (split.csv, with each "
                 "file's source)",
    }
