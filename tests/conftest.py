"""Shared fixtures: synthetic data made here, the real radiographs when present, and
skips for optional stacks (TensorFlow)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/imagegen.py

REPO = Path(__file__).resolve().parents[1]
# Prefix for `python -c` code: makes TensorFlow and Keras unimportable in that process.
BLOCK_TF = "import sys; [sys.modules.__setitem__(m, None) for m in ('tensorflow', 'tf_keras', 'keras')]; "


@pytest.fixture(scope="session", autouse=True)
def kedge_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per-machine caches (OpenVINO blobs, auto's timings) go to a fresh folder, never ~/.cache."""
    folder = tmp_path_factory.mktemp("kedge-cache")
    os.environ["KEDGE_CACHE"] = str(folder)
    return folder


def real_data_root() -> Path | None:
    """The one setting for the real radiographs: KEDGE_REAL_DATA, else ../shared/data."""
    configured = os.environ.get("KEDGE_REAL_DATA")
    root = Path(configured) if configured else REPO.parent / "shared" / "data"
    return root if (root / "knee-3class").is_dir() else None


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = real_data_root()
    if root is None:
        pytest.skip("real radiographs not found (set KEDGE_REAL_DATA or place ../shared/data)")
    return root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that asks for TensorFlow (the tf_keras fixture, directly or through a
    fixture it uses, such as a trained bundle) gets the `tensorflow` marker, so
    `make test-fast` (-m "not tensorflow") leaves out all training without a hand-kept list."""
    for item in items:
        if "tf_keras" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.tensorflow)


@pytest.fixture(scope="session")
def tf_keras():
    pytest.importorskip("tf_keras", reason="needs the [train] extra (TensorFlow, tf_keras)")
    from kedge.train.tfkeras import keras

    return keras()


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes x 60 synthetic knees, 224 px (generated once per session)."""
    from kedge.runtime.checks.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synthetic") / "knees"
    write_dataset(root, per_class=60, seed=0)
    return root


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path) -> Path:
    """Eight synthetic knees per class: enough for parity rows, quick for the reference evaluator."""
    import shutil

    root = tmp_path_factory.mktemp("small") / "knees"
    for folder in sorted(p for p in synthetic_data.iterdir() if p.is_dir()):
        (root / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.png"))[:8]:
            shutil.copy(image, root / folder.name / image.name)
    return root
