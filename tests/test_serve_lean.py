"""`kedge serve` without a Triton server: PyTriton replaced by a recorder, so what kedge
asks of Triton (the listening address) and what its model function answers (a refusal
for tensors that are not finite or out of range) are checked on a lean install."""
from __future__ import annotations

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
    from kedge.runtime.bundle import load_bundle
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
