"""Model bundles: one folder per trained model, described by its kedge.json manifest.

Every command takes a bundle. The manifest records what a later step must know to
use the model the same way (classes, input spec, preprocessing version) and the
sha256 of every file, so a swapped or corrupted file is caught before it is used.
Everything here writes atomically (temporary file, then rename): an interrupted run
never leaves a partial file under its final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

from kedge.runtime.errors import KedgeError
from kedge.runtime.preprocess import INPUT_SHAPE, INTERPOLATION, PREPROCESS_VERSION
from kedge.runtime.schema import SCHEMA_VERSION, check_inside, parse_manifest, validate

MANIFEST_NAME = "kedge.json"
INTENDED_USE = "Research use only, not a diagnostic device."
_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _absolute(path: str | os.PathLike[str]) -> PurePath:
    text = os.fspath(path)
    if re.match(r"[A-Za-z]:[\\/]", text):
        return PureWindowsPath(text)
    return Path(os.path.abspath(os.path.expanduser(text)))


def portable_path(path: str | os.PathLike[str], *roots: str | os.PathLike[str] | None) -> str:
    """How kedge.json names a folder or file of the machine that wrote it: relative to the
    longest of `roots` (e.g. --data) that holds it, else by its own name. An absolute path
    says where one machine keeps its data, means nothing on another, and must not ship."""
    target = _absolute(path)
    for root in sorted((_absolute(r) for r in roots if r is not None), key=lambda r: -len(r.parts)):
        if target != root and target.is_relative_to(root):
            return target.relative_to(root).as_posix()
    return target.name or "."


def check_output_folder(final: str | os.PathLike[str], overwrite: bool) -> None:
    """Refuse an existing output folder unless overwriting; callers check early, before long work."""
    if Path(final).exists() and not overwrite:
        raise KedgeError(f"{final}: already exists (choose another --out, or pass --overwrite)")


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `final`; it becomes `final` only on success.

    A folder that is already there is refused unless `overwrite`, in which case it is
    replaced only once the new one is complete.
    """
    final = Path(final)
    check_output_folder(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_UMASK)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@dataclass
class Bundle:
    """A bundle folder and its parsed manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["model"]["classes"])

    def file(self, key: str) -> Path:
        """Path of a file named in manifest["artifacts"][key], checked against its sha256."""
        relative = self.manifest.get("artifacts", {}).get(key)
        left_out = self.manifest.get("shipped", {}).get("left_out", {}).get(key)
        if relative is None and left_out:
            raise KedgeError(f"{self.path}: {left_out['file']} ({key}) was left out when this bundle was shipped "
                             f"(size budget; sha256 {str(left_out['sha256'])[:12]}); use the full exported bundle")
        if relative is None:
            raise KedgeError(f"{self.path}: the bundle has no {key} (kedge.json artifacts)")
        path = check_inside(self.path, relative, self.path / MANIFEST_NAME)
        if not path.is_file():
            raise KedgeError(f"{path}: missing from the bundle")
        expected = self.manifest.get("files", {}).get(relative)
        if not expected:  # load_bundle refuses this too; kept here for manifests edited in memory
            raise KedgeError(f"{path}: no sha256 in kedge.json; refused")
        if sha256_file(path) != expected:
            raise KedgeError(f"{path}: sha256 differs from kedge.json (file changed or corrupted)")
        return path


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    folder = Path(path)
    manifest_path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise KedgeError(f"{folder}: no such bundle folder")
    if not manifest_path.is_file():
        raise KedgeError(f"{folder}: not a kedge bundle (no {MANIFEST_NAME})")
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KedgeError(f"{manifest_path}: not valid JSON (not UTF-8 text)") from None
    manifest = parse_manifest(text, manifest_path)
    validate(manifest, folder, manifest_path)
    return Bundle(folder, manifest)


def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the sha256 of every file in the bundle, then write kedge.json atomically."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    }
    manifest = {"schema": SCHEMA_VERSION, **manifest, "files": files}
    manifest.setdefault("intended_use", INTENDED_USE)
    manifest.setdefault("input", {"name": "image", "shape": [None, *INPUT_SHAPE], "layout": "NHWC",
                                  "dtype": "float32", "range": [0.0, 1.0]})
    manifest.setdefault("preprocessing", {"version": PREPROCESS_VERSION, "interpolation": INTERPOLATION})
    atomic_write_json(folder / MANIFEST_NAME, manifest)
    return manifest


def update_manifest(bundle: Bundle, **sections: Any) -> dict[str, Any]:
    """Replace these top-level sections of kedge.json (a section given as None is removed)
    and write it atomically. Only kedge.json changes, so the recorded sha256 of every
    other file stays as it was: a file put beside a bundle (the model.keras a reference
    was read from) is never added to its file list."""
    manifest = {**bundle.manifest, **sections}  # a replaced section keeps its place in the file
    manifest = {k: v for k, v in manifest.items() if v is not None}
    atomic_write_json(bundle.path / MANIFEST_NAME, manifest)
    bundle.manifest = manifest
    return manifest
