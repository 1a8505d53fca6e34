"""Bundles: atomic writes, staged folders, manifest sha256s and their checks, and the one
writer of kedge.json with its one rule for which files it hashes."""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from kedge.runtime.bundle.manifest import (
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


def test_update_hashes_only_the_files_the_bundle_names(tmp_path) -> None:
    """One rule: files lists what artifacts and engines name, hashed when a section naming
    them is written; a file merely beside the bundle is never added."""
    folder = make_bundle(tmp_path)
    (folder / "notes.txt").write_text("beside the bundle, not part of it")
    (folder / "model.onnx").write_bytes(b"onnx")
    bundle = load_bundle(folder)
    bundle.update(golden=None, parity={"rows": []})  # a section that names no file: no sha256 taken
    assert load_bundle(folder).files == {"model.keras": sha256_file(folder / "model.keras")}
    bundle.update(artifacts={**bundle.artifacts, "onnx_fp32": "model.onnx"})
    assert set(load_bundle(folder).files) == {"model.keras", "model.onnx"}
    assert load_bundle(folder).manifest["parity"] == {"rows": []}
    (folder / "model.keras").write_bytes(b"retrained")  # rewritten under its name, then recorded again
    bundle.update(artifacts={"keras": "model.keras"})
    assert load_bundle(folder).files == {"model.keras": sha256_file(folder / "model.keras")}  # model.onnx dropped
    with pytest.raises(KedgeError, match="written by Bundle.update itself"):
        bundle.update(files={})


SHIPPED = Path(__file__).resolve().parents[1] / "runtime" / "models" / "knee-cnn"


def test_golden_on_a_shipped_bundle_with_model_keras_beside_it_keeps_its_file_list(tmp_path) -> None:
    """docs/export-and-parity.md has users put model.keras back beside a shipped bundle (the Keras
    reference); `kedge golden` there rewrites kedge.json, which must not list it."""
    from click.testing import CliRunner

    from kedge.cli import main

    copy = tmp_path / "knee-cnn"
    shutil.copytree(SHIPPED, copy)
    (copy / "model.keras").write_bytes(b"not the real one: only its name matters here")
    before = load_bundle(copy).manifest
    result = CliRunner().invoke(main, ["golden", str(copy), "--count", "2", "--reference", "onnx-fp32"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    after = load_bundle(copy).manifest
    assert after["golden"] != before["golden"] and after["golden"]["indices"] != before["golden"]["indices"]
    assert after["files"] == before["files"] and "model.keras" not in after["files"]
    assert {k: v for k, v in after.items() if k != "golden"} == {k: v for k, v in before.items() if k != "golden"}
    load_bundle(copy).update(artifacts=load_bundle(copy).artifacts)  # a rewrite that rehashes: still not listed
    assert load_bundle(copy).files == before["files"]


PACKAGES = ("runtime", "export", "train", "calibration", "kedge")
WRITERS = {"atomic_write_json", "atomic_write_text", "atomic_path", "write_text", "write_bytes", "dump", "replace",
           "rename", "copyfile", "copy", "copy2", "copytree", "move", "symlink_to", "link_to", "hardlink_to"}


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _writes(call: ast.Call) -> bool:
    """A call that can create or change a file: the writers above, and open() in a write mode."""
    name = _call_name(call)
    if name == "open":  # open(path, "w"), or os.open(path, os.O_WRONLY | os.O_CREAT)
        mode = call.args[1] if len(call.args) > 1 else next(
            (k.value for k in call.keywords if k.arg in ("mode", "flags")), None)
        if isinstance(mode, ast.Constant):
            return bool(set(str(mode.value)) & set("wax+"))
        return mode is not None and any(flag in ast.unparse(mode) for flag in ("O_WR", "O_RDWR", "O_CREAT", "O_APPEND"))
    return name in WRITERS


def _names_manifest(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == "kedge.json"
               or isinstance(n, ast.Name | ast.Attribute) and getattr(n, "id", getattr(n, "attr", "")) ==
               "MANIFEST_NAME" for n in ast.walk(node))


def _scopes(tree: ast.Module) -> list[tuple[str, list[ast.AST]]]:
    """(qualified name, its own statements) of the module body and every function, nested
    functions apart from the function that holds them."""
    scopes: list[tuple[str, list[ast.AST]]] = []

    def visit(body: list[ast.stmt], name: str) -> None:
        own: list[ast.AST] = []
        for statement in body:
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                visit(statement.body, f"{name}.{statement.name}".lstrip("."))
            else:
                own.append(statement)
        scopes.append((name or "<module>", own))

    visit(tree.body, "")
    return scopes


def test_kedge_json_has_one_writer() -> None:
    """No function outside Bundle.update both names kedge.json and writes a file: every
    other change to a bundle's manifest goes through it (its one hashing rule, atomic)."""
    root = Path(__file__).resolve().parents[1]
    writers = set()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "models" in path.relative_to(root).parts:
                continue
            for name, statements in _scopes(ast.parse(path.read_text(encoding="utf-8"))):
                calls = [n for s in statements for n in ast.walk(s) if isinstance(n, ast.Call)]
                if any(_writes(c) for c in calls) and any(_names_manifest(s) for s in statements):
                    writers.add((path.relative_to(root).as_posix(), name))
    assert writers == {("runtime/bundle/manifest.py", "Bundle.update")}
