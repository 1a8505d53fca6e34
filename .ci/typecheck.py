"""Type-check the whole kedge package under the names it is imported by.

setup.cfg maps the repository's top-level folders into one package (runtime/ is
kedge.runtime, train/ is kedge.train, ...). mypy has no such mapping: handed the
folders, it names runtime/bundle/manifest.py `runtime.bundle.manifest`, and every `from kedge.runtime...`
import resolves to nothing (Any, under ignore_missing_imports), so no call across
modules is checked. This builds a tree of symlinks shaped like the installed package,
from setup.cfg's package_dir (the one list of folders, so a new folder is covered
without an edit here), runs mypy on it, and prints its findings with repository paths.

    python .ci/typecheck.py TREE_DIR [mypy options...]
"""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_dirs() -> dict[str, str]:
    """setup.cfg's package_dir: package name -> repository folder."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = [line.split("=") for line in config["options"]["package_dir"].strip().splitlines()]
    return {name.strip(): folder.strip() for name, folder in lines}


def build_tree(tree: Path) -> dict[str, str]:
    """Link the repository folders into TREE as one package; returns tree prefix -> repository prefix."""
    mapping = package_dirs()
    (root,) = [name for name in mapping if "." not in name]
    shutil.rmtree(tree, ignore_errors=True)
    (tree / root).mkdir(parents=True)
    for source in sorted((REPO / mapping[root]).glob("*.py")):
        (tree / root / source.name).symlink_to(source)
    for package in sorted(init.parent for init in (REPO / mapping[root]).glob("*/__init__.py")):
        (tree / root / package.name).symlink_to(package, target_is_directory=True)  # kedge/commands/
    prefixes = {f"{tree / root}/": f"{mapping[root]}/"}
    for name, folder in mapping.items():
        if name != root:
            if name.count(".") != 1:
                raise SystemExit(f"typecheck: {name}: only folders mapped one level under {root} are supported")
            (tree / name.replace(".", "/")).symlink_to(REPO / folder, target_is_directory=True)
            prefixes[f"{tree / name.replace('.', '/')}/"] = f"{folder}/"
    return prefixes


def main(argv: list[str]) -> int:
    tree = Path(os.path.relpath(Path(argv[0]).resolve(), REPO))  # relative, as mypy prints paths under its cwd
    prefixes = build_tree(REPO / tree)
    prefixes = {os.path.relpath(prefix, REPO) + "/": folder for prefix, folder in prefixes.items()}
    root = next(iter(prefixes))
    result = subprocess.run([sys.executable, "-m", "mypy", *argv[1:], root], capture_output=True, text=True,
                            cwd=REPO)
    for line in (result.stdout + result.stderr).splitlines():
        for prefix in sorted(prefixes, key=len, reverse=True):  # kedge/runtime/ before kedge/
            if line.startswith(prefix):
                line = prefixes[prefix] + line[len(prefix):]
                break
        print(line)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
