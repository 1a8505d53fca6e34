"""The models that ship inside kedge (runtime/models/<name>/), so `kedge infer knee.png`
works on a fresh install without training anything."""
from __future__ import annotations

from pathlib import Path

from kedge.runtime.bundle import MANIFEST_NAME

MODELS_DIR = Path(__file__).resolve().parent / "models"
ORDER = ("resnet50-gru", "knee-cnn")  # the binary osteoporosis answer first, then the 3-class result


def shipped_bundles() -> list[Path]:
    """The shipped bundle folders, in ORDER (empty in a checkout without them)."""
    found = {p.parent.name: p.parent for p in MODELS_DIR.glob(f"*/{MANIFEST_NAME}")}
    return [found[n] for n in ORDER if n in found] + [found[n] for n in sorted(found) if n not in ORDER]
