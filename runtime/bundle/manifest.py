"""Model bundles: one folder per trained model, described by its kedge.json manifest.

Every command takes a bundle. The manifest records what a later step must know to
use the model the same way (classes, input spec, preprocessing version) and the
sha256 of every file, so a swapped or corrupted file is caught before it is used.
Everything here writes atomically (temporary file, then rename): an interrupted run
never leaves a partial file under its final name.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from kedge.runtime.bundle.schema import (
    MAX_MANIFEST_BYTES,
    PATH_TABLES,
    SCHEMA_VERSION,
    check_inside,
    parse_manifest,
    validate,
)
from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.preprocess import INPUT_SHAPE, INTERPOLATION, PREPROCESS_VERSION

if TYPE_CHECKING:
    from kedge.runtime.inputs.folders import LabelledImage

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
    remove_stale_stages(final)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}-", suffix=".partial", dir=final.parent))
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


LEGACY_STAGE_AGE_S = 3600  # a staging folder named without its process id counts as stale after an hour


def remove_stale_stages(final: Path) -> list[Path]:
    """Delete staging folders of `final` left by a killed run: those whose process (the
    id in the name) is gone, and unnamed ones over an hour old. A live run's stays."""
    removed = []
    for stage in final.parent.glob(f".{glob.escape(final.name)}.*.partial"):
        owner = stage.name[len(final.name) + 2:].split("-", 1)[0]
        if owner.isdigit():
            if _alive(int(owner)):
                continue
        elif time.time() - stage.lstat().st_mtime < LEGACY_STAGE_AGE_S:
            continue
        if stage.is_dir() and not stage.is_symlink():
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@dataclass
class Bundle:
    """A bundle folder and its parsed manifest. Everything else reads kedge.json through
    these accessors and writes it only through `update`, so the manifest's layout is
    known in one place."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["model"]["classes"])

    @property
    def intended_use(self) -> str:
        return str(self.manifest.get("intended_use", "-"))

    def section(self, name: str) -> dict[str, Any]:
        """A top-level table of kedge.json ({} when the bundle has none): model, training,
        metrics, calibration, envelope, card, rebuild..."""
        return dict(self.manifest.get(name) or {})

    @property
    def artifacts(self) -> dict[str, str]:
        """Artifact key (onnx_fp32, split_manifest, ...) -> the bundle-relative file."""
        return self.section("artifacts")

    def has(self, key: str) -> bool:
        """The bundle lists this artifact (its file is checked only when opened, by `file`)."""
        return key in self.artifacts

    @property
    def exports(self) -> dict[str, dict[str, Any]]:
        """Artifact key -> how export made it (its source's sha256, gate, tool, time)."""
        return self.section("exports")

    @property
    def files(self) -> dict[str, str]:
        """Bundle-relative file -> its sha256, as recorded."""
        return self.section("files")

    def sha256(self, key: str) -> str | None:
        """The sha256 kedge.json records for the file of artifact `key` (None: no such artifact)."""
        relative = self.artifacts.get(key)
        return self.files.get(relative) if relative is not None else None

    @property
    def engines(self) -> dict[str, str]:
        """Engine file name -> its bundle-relative path (engines built on some machine)."""
        return self.section("engines")

    @property
    def left_out(self) -> dict[str, dict[str, Any]]:
        """Artifacts a shipped bundle was shipped without: key -> {file, sha256, bytes}."""
        return dict(self.section("shipped").get("left_out") or {})

    @property
    def parity(self) -> dict[str, Any]:
        """The recorded parity ({} when none was recorded)."""
        return self.section("parity")

    @property
    def golden(self) -> dict[str, Any] | None:
        """The stored golden set, or None."""
        return self.manifest.get("golden") or None

    @property
    def split(self) -> dict[str, str]:
        """The split.csv: image path relative to the training folder -> train, val, test or excluded."""
        from kedge.runtime.inputs.folders import read_split_manifest

        return read_split_manifest(self.file("split_manifest"))

    @property
    def sources(self) -> dict[str, str]:
        """The split.csv's source of each image ({} without a split.csv, or one written before sources)."""
        from kedge.runtime.inputs.folders import read_split_sources

        return read_split_sources(self.file("split_manifest")) if self.has("split_manifest") else {}

    def labelled(self, data: str | os.PathLike[str], split: str | None = None,
                 split_csv: str | os.PathLike[str] | None = None) -> list[LabelledImage]:
        """The labelled images of `data` (class folders of this bundle's classes), only those
        the bundle's split.csv (or `split_csv`, another bundle's) puts in `split` when given."""
        from kedge.runtime.inputs.folders import in_split, read_split_manifest, scan_labelled

        items = scan_labelled(data, self.classes)
        if split is None:
            return items
        if split_csv is None and not self.has("split_manifest"):
            raise KedgeError(f"{self.path}: no split manifest, so --split cannot be used")
        assigned = read_split_manifest(split_csv) if split_csv is not None else self.split
        return in_split(items, data, assigned, split)

    def file(self, key: str) -> Path:
        """Path of a file named in manifest["artifacts"][key], checked against its sha256."""
        relative = self.artifacts.get(key)
        left_out = self.left_out.get(key)
        if relative is None and left_out:
            raise KedgeError(f"{self.path}: {left_out['file']} ({key}) was left out when this bundle was shipped "
                             f"(size budget; sha256 {str(left_out['sha256'])[:12]}); use the full exported bundle")
        if relative is None:
            raise KedgeError(f"{self.path}: the bundle has no {key} (kedge.json artifacts)")
        path = check_inside(self.path, relative, self.path / MANIFEST_NAME)
        if not path.is_file():
            kind = "missing from the bundle" if not path.exists() else "not a regular file (a FIFO, device or folder)"
            raise KedgeError(f"{path}: {kind}; refused")
        expected = self.files.get(relative)
        if not expected:  # load_bundle refuses this too; kept here for manifests edited in memory
            raise KedgeError(f"{path}: no sha256 in kedge.json; refused")
        if sha256_file(path) != expected:
            raise KedgeError(f"{path}: sha256 differs from kedge.json (file changed or corrupted)")
        return path

    def update(self, **sections: Any) -> None:
        """Replace these top-level sections of kedge.json (a section given as None is removed)
        and write it atomically: the one writer of kedge.json.

        The one hashing rule: `files` lists exactly the files the bundle names as its own,
        those of its artifacts and engines (with each engine's sidecar), and a file's sha256
        is taken when a section naming it is written; every other recorded sha256 stays as
        it was. So a file put beside a bundle (the model.keras a shipped bundle's reference
        is read from) is never added to its file list, and a section that names no file
        (parity, golden) leaves every recorded sha256 alone."""
        if "files" in sections or "schema" in sections:
            raise KedgeError("kedge.json: files and schema are written by Bundle.update itself")
        manifest = {**self.manifest, **sections}  # a replaced section keeps its place in the file
        manifest = {k: v for k, v in manifest.items() if v is not None}
        recorded = dict(self.manifest.get("files") or {})
        rehash = {rel for table in PATH_TABLES if table in sections for rel in _own_files(manifest, table)}
        files = {}
        for relative in sorted({rel for table in PATH_TABLES for rel in _own_files(manifest, table)}):
            if relative in recorded and relative not in rehash:
                files[relative] = recorded[relative]
            elif (self.path / relative).is_file():
                files[relative] = sha256_file(self.path / relative)
        manifest["files"] = files
        atomic_write_json(self.path / MANIFEST_NAME, manifest)
        self.manifest = manifest


def _own_files(manifest: dict[str, Any], table: str) -> list[str]:
    """The bundle-relative files one path table of a manifest names (an engine with its sidecar)."""
    named = [str(rel) for rel in (manifest.get(table) or {}).values()]
    return named + [f"{rel}.json" for rel in named] if table == "engines" else named


def new_bundle(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> Bundle:
    """A bundle's first kedge.json (its files written already), with the defaults every
    manifest carries; written by `Bundle.update`."""
    sections = {k: v for k, v in manifest.items() if k not in ("files", "schema")}
    sections.setdefault("intended_use", INTENDED_USE)
    sections.setdefault("input", {"name": "image", "shape": [None, *INPUT_SHAPE], "layout": "NHWC",
                                  "dtype": "float32", "range": [0.0, 1.0]})
    sections.setdefault("preprocessing", {"version": PREPROCESS_VERSION, "interpolation": INTERPOLATION})
    bundle = Bundle(Path(folder), {"schema": SCHEMA_VERSION})
    bundle.update(**sections)
    return bundle


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    folder = Path(path)
    manifest_path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise KedgeError(f"{folder}: no such bundle folder")
    if not os.path.lexists(manifest_path):
        raise KedgeError(f"{folder}: not a kedge bundle (no {MANIFEST_NAME})")
    check_inside(folder, MANIFEST_NAME, manifest_path)
    try:
        text = _read_manifest(manifest_path).decode("utf-8")
    except UnicodeDecodeError:
        raise KedgeError(f"{manifest_path}: not valid JSON (not UTF-8 text)") from None
    manifest = parse_manifest(text, manifest_path)
    validate(manifest, folder, manifest_path)
    return Bundle(folder, manifest)


def _read_manifest(path: Path) -> bytes:
    """kedge.json's bytes, its size checked before any is read (a sparse 1 GiB file
    once took 18 s and 2 GB to refuse). Opened non-blocking and checked with fstat,
    so a FIFO in its place is refused instead of waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise KedgeError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KedgeError(f"{path}: not a regular file (a FIFO, device or folder); refused")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise KedgeError(f"{path}: manifest is over {MAX_MANIFEST_BYTES >> 20} MiB")
        return handle.read(MAX_MANIFEST_BYTES + 1)
