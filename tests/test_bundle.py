"""Bundles: atomic writes, staged folders, manifest sha256s and their checks."""
from __future__ import annotations

import json

import pytest

from kedge.runtime.bundle import (
    MANIFEST_NAME,
    atomic_path,
    atomic_write_json,
    load_bundle,
    new_bundle,
    sha256_file,
    staged_folder,
)
from kedge.runtime.errors import KedgeError


def test_atomic_path_leaves_nothing_on_failure(tmp_path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_only_when_complete(tmp_path) -> None:
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("{broken")
        raise RuntimeError
    assert json.loads(target.read_text()) == {"v": 1}
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_staged_folder(tmp_path) -> None:
    final = tmp_path / "bundle"
    with pytest.raises(RuntimeError), staged_folder(final) as stage:
        (stage / "x").write_text("partial")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []  # no partial bundle, no staging folder
    with staged_folder(final) as stage:
        (stage / "x").write_text("one")
    with pytest.raises(KedgeError, match="already exists"), staged_folder(final):
        pass
    with pytest.raises(RuntimeError), staged_folder(final, overwrite=True) as stage:
        (stage / "x").write_text("two")
        raise RuntimeError
    assert (final / "x").read_text() == "one"  # the old bundle survives a failed overwrite
    with staged_folder(final, overwrite=True) as stage:
        (stage / "x").write_text("two")
    assert (final / "x").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def make_bundle(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"weights")
    new_bundle(folder, {"model": {"name": "knee-cnn", "classes": ["A", "B"]},
                            "artifacts": {"keras": "model.keras"}})
    return folder


def test_manifest_records_sha256_and_checks_them(tmp_path) -> None:
    folder = make_bundle(tmp_path)
    bundle = load_bundle(folder)
    assert bundle.manifest["files"] == {"model.keras": sha256_file(folder / "model.keras")}
    assert bundle.manifest["intended_use"].startswith("Research use only")
    assert bundle.classes == ["A", "B"] and bundle.name == "knee-cnn"
    assert bundle.file("keras") == folder / "model.keras"
    (folder / "model.keras").write_bytes(b"tampered")
    with pytest.raises(KedgeError, match="sha256 differs"):
        bundle.file("keras")
    with pytest.raises(KedgeError, match="has no onnx"):
        bundle.file("onnx")


@pytest.mark.parametrize("content,problem", [(None, "not a kedge bundle"), ("{oops", "not valid JSON"),
                                             ('{"schema": 99}', "unsupported manifest schema")])
def test_load_bundle_errors(tmp_path, content, problem) -> None:
    folder = tmp_path / "b"
    folder.mkdir()
    if content is not None:
        (folder / MANIFEST_NAME).write_text(content)
    with pytest.raises(KedgeError, match=problem):
        load_bundle(folder)
    with pytest.raises(KedgeError, match="no such bundle folder"):
        load_bundle(tmp_path / "missing")


def test_a_killed_runs_staging_folders_are_removed_by_the_next(tmp_path) -> None:
    """`kedge ship` (or train) killed mid-copy leaves .NAME.<pid>-XXXX.partial/: the next
    run into the same place removes those of dead processes and old unnamed ones, and
    leaves a live run's alone."""
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live, legacy, fresh = (tmp_path / f".out.{tag}.partial" for tag in
                                 (f"{int(gone.stdout)}-ab12", f"{os.getpid()}-cd34", "x7k2p9q1", "m3n4b5v6"))
    for stage in (dead, live, legacy, fresh):
        (stage / "model.onnx").parent.mkdir()
        (stage / "model.onnx").write_bytes(b"half a model")
    os.utime(legacy, (0, 0))  # an unnamed staging folder from 1970: a kedge before process ids in the name
    with staged_folder(tmp_path / "out") as stage:
        (stage / "x").write_text("one")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, fresh.name, "out"])
