"""Triton without a Triton server, on a lean install. `kedge serve`: PyTriton replaced by
a recorder, so what kedge asks of Triton (the listening address) and what its model
function answers (a refusal for tensors that are not finite or out of range) are
checked. `kedge infer --triton`: tritonclient replaced by a fake server with
max_batch_size 4, to check batch splitting and the output check."""
from __future__ import annotations

import json
import signal
import sys
import types

import numpy as np
import pytest
from leanbundle import make_lean_bundle

pytest.importorskip("onnx", reason="the lean test bundle is built with onnx")


class _Recorder:
    """Stands in for PyTriton's config classes: keeps its keyword arguments."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class _Triton:
    configs: list[dict] = []
    bound: dict = {}

    def __init__(self, config):
        _Triton.configs.append(config.kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def bind(self, model_name, infer_func, **kwargs):
        _Triton.bound[model_name] = infer_func

    def serve(self):
        return None


@pytest.fixture
def fake_pytriton(monkeypatch):
    modules = {name: types.ModuleType(name) for name in ("pytriton", "pytriton.decorators",
                                                         "pytriton.model_config", "pytriton.triton")}
    modules["pytriton.decorators"].batch = lambda function: function
    for name in ("DynamicBatcher", "ModelConfig", "Tensor"):
        setattr(modules["pytriton.model_config"], name, _Recorder)
    modules["pytriton.triton"].Triton = _Triton
    modules["pytriton.triton"].TritonConfig = _Recorder
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    _Triton.configs.clear()
    _Triton.bound.clear()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield _Triton
    for number, handler in handlers.items():  # serve() installs its own
        signal.signal(number, handler)


def test_serve_listens_on_loopback_unless_told_and_refuses_non_finite_tensors(fake_pytriton, tmp_path,
                                                                             synthetic_data) -> None:
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.errors import KedgeError
    from kedge.runtime.serve import serve

    bundle = load_bundle(make_lean_bundle(tmp_path / "tiny", synthetic_data, int8=False))
    serve([bundle], precision="fp32", log=lambda line: None)
    serve([bundle], precision="fp32", log=lambda line: None, host="10.1.2.3")
    for config, host in zip(fake_pytriton.configs, ("127.0.0.1", "10.1.2.3"), strict=True):
        assert {config.get(k) for k in ("http_address", "grpc_address", "metrics_address")} == {host}, config
    infer = fake_pytriton.bound["tiny"]
    good = infer(np.full((2, 224, 224, 3), 0.5, np.float32))["probabilities"]
    assert good.shape == (2, 3) and np.isfinite(good).all()
    for bad in (np.nan, np.inf, -np.inf, 255.0, -0.5):
        batch = np.full((2, 224, 224, 3), 0.5, np.float32)
        batch[1, 10, 10, 0] = bad
        with pytest.raises(KedgeError, match="must be finite and within"):
            infer(batch)


def test_serve_help_names_the_host_and_its_default() -> None:
    from click.testing import CliRunner

    from kedge.cli import main

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--host" in result.output and "127.0.0.1" in result.output and "Examples:" in result.output


class _Answer:
    def __init__(self, probabilities):
        self.probabilities = probabilities

    def as_numpy(self, name):
        return self.probabilities


class _Client:
    """A Triton HTTP client whose server runs a model with `classes` outputs and max_batch_size 4."""

    classes = 3
    batches: list[int] = []

    def __init__(self, address, **kwargs):
        pass

    def is_model_ready(self, model):
        return True

    def get_model_config(self, model):
        return {"name": model, "max_batch_size": 4}

    def infer(self, model, inputs):
        (tensor,) = inputs
        if len(tensor.data) > 4:
            raise RuntimeError("[request id: <id_unknown>] inference request batch-size must be <= 4")
        _Client.batches.append(len(tensor.data))
        return _Answer(np.full((len(tensor.data), self.classes), 1.0 / self.classes, np.float32))

    def close(self):
        pass


class _Input:
    def __init__(self, name, shape, dtype):
        self.data = None

    def set_data_from_numpy(self, data):
        self.data = data


@pytest.fixture
def fake_tritonclient(monkeypatch):
    http = types.ModuleType("tritonclient.http")
    http.InferenceServerClient, http.InferInput = _Client, _Input
    monkeypatch.setitem(sys.modules, "tritonclient", types.ModuleType("tritonclient"))
    monkeypatch.setitem(sys.modules, "tritonclient.http", http)
    monkeypatch.setattr(_Client, "batches", [])
    return _Client


def _infer_triton(bundle, images, *options):
    from click.testing import CliRunner

    from kedge.cli import main

    return CliRunner().invoke(main, ["infer", *map(str, images), "--model", str(bundle), "--triton",
                                     "http://127.0.0.1:1", "--json", "--quiet", *options])


def test_triton_batches_are_split_to_the_servers_max_batch(fake_tritonclient, tmp_path, synthetic_data) -> None:
    bundle = make_lean_bundle(tmp_path / "tiny", synthetic_data, int8=False)
    images = sorted(synthetic_data.rglob("*.png"))[:10]
    result = _infer_triton(bundle, images, "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 10
    assert max(fake_tritonclient.batches) <= 4 and sum(fake_tritonclient.batches) == 1 + 10  # + the load check


def test_triton_model_with_another_class_count_is_one_line(fake_tritonclient, monkeypatch, tmp_path,
                                                           synthetic_data) -> None:
    bundle = make_lean_bundle(tmp_path / "tiny", synthetic_data, int8=False)
    monkeypatch.setattr(_Client, "classes", 2)
    result = _infer_triton(bundle, sorted(synthetic_data.rglob("*.png"))[:3])
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.stderr[-2000:]
    assert len(lines) == 1 and "kedge.json lists 3 classes; refused" in lines[0], lines
