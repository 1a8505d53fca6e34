"""OpenVINO's compiled-model cache is checked before use: a changed or cut-short blob is
rebuilt from the ONNX, so the answer is that of a fresh compile and no error blames the
bundle's intact ONNX file."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from leanbundle import tiny_onnx

pytest.importorskip("openvino")


@pytest.fixture()
def model(tmp_path) -> tuple[Path, str]:
    path = tiny_onnx(tmp_path / "model.onnx")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _open(model: tuple[Path, str], cache: Path):
    from kedge.runtime.backends.openvino import OpenVINOSession

    return OpenVINOSession(model[0], model[1], "fp32", 1, cache, "onnx-fp32")


def _flip_weights(blob: Path, onnx_path: Path) -> None:
    """Invert 2,000 bytes where the blob keeps the convolution's weights (the blob still
    imports and answers, wrongly: the failure the issue measured), else in its middle."""
    import onnx
    from onnx import numpy_helper

    weights = next(numpy_helper.to_array(t) for t in onnx.load(onnx_path).graph.initializer if t.name == "conv_w")
    data = bytearray(blob.read_bytes())
    start = data.find(weights.tobytes()[:64])
    start = start if start >= 0 else len(data) // 4
    data[start:start + 2000] = bytes(b ^ 0xFF for b in data[start:start + 2000])
    blob.write_bytes(bytes(data))


def _truncate(blob: Path, onnx_path: Path) -> None:
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_flip_weights, _truncate], ids=["flipped", "truncated"])
def test_a_damaged_blob_is_rebuilt_and_answers_like_a_fresh_compile(model, tmp_path, damage) -> None:
    batch = np.random.default_rng(1).random((4, 224, 224, 3), dtype=np.float32)
    fresh = _open(model, None)  # no cache: compiled from the ONNX
    expected = fresh.infer(batch)
    cache = tmp_path / "cache"
    first = _open(model, cache)
    assert not first.cached and np.array_equal(first.infer(batch), expected)
    blob = next(cache.glob("*.blob"))
    good = blob.read_bytes()
    assert _open(model, cache).cached  # an intact blob is used
    damage(blob, model[0])
    bad = blob.read_bytes()
    assert bad != good
    again = _open(model, cache)  # before the check: a wrong answer (flipped) or an error naming model.onnx
    assert np.allclose(again.infer(batch), expected, rtol=0, atol=1e-6)
    assert not again.cached  # compiled again, not imported
    rebuilt = blob.read_bytes()
    assert rebuilt != bad and (cache / f"{blob.name}.sha256").read_text().strip() == \
        hashlib.sha256(rebuilt).hexdigest()
    assert _open(model, cache).cached  # and the rebuilt blob is used from then on


def test_a_blob_without_its_recorded_sha256_is_not_trusted(model, tmp_path) -> None:
    """A blob left by a run killed between the blob and its record, or by an older kedge."""
    cache = tmp_path / "cache"
    _open(model, cache)
    blob = next(cache.glob("*.blob"))
    (cache / f"{blob.name}.sha256").unlink()
    assert not _open(model, cache).cached
    assert (cache / f"{blob.name}.sha256").is_file()


def test_an_unwritable_cache_leaves_the_model_running(model, tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    session = _open(model, blocked / "cache")
    assert not session.cached and session.infer(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 3)
