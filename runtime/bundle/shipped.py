"""The models that ship inside kedge (runtime/models/<name>/), so `kedge infer knee.png`
works on a fresh install without training anything, and every command that takes a
bundle also takes a shipped model's name (`kedge verify knee-cnn`)."""
from __future__ import annotations

import os
from pathlib import Path

from kedge.runtime.bundle.manifest import MANIFEST_NAME
from kedge.runtime.errors import KedgeError

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"  # inside the installed package, wherever that is
ORDER = ("resnet50-gru", "knee-cnn")  # the binary osteoporosis answer first, then the 3-class result


def shipped_bundles() -> list[Path]:
    """The shipped bundle folders, in ORDER (empty in a checkout without them)."""
    found = {p.parent.name: p.parent for p in MODELS_DIR.glob(f"*/{MANIFEST_NAME}")}
    return [found[n] for n in ORDER if n in found] + [found[n] for n in sorted(found) if n not in ORDER]


def resolve_bundle(given: str | os.PathLike[str]) -> Path:
    """The bundle folder meant by `given`: an existing folder (so a user's own ./knee-cnn is
    never shadowed), else the shipped model of that name, found through the installed
    package: after `pip install` the models are not under the current folder."""
    folder = Path(given)
    if folder.is_dir():
        return folder
    shipped = {path.name: path for path in shipped_bundles()}
    if os.fspath(given) in shipped:
        return shipped[os.fspath(given)]
    raise KedgeError(f"no such bundle folder or shipped model {os.fspath(given)!r} "
                     f"(shipped: {', '.join(shipped) or 'none'})")
