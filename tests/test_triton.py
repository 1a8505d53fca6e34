"""Triton: `kedge export --triton` writes a repository whose config parses with Triton's
own ModelConfig protobuf, and `kedge serve` runs a real Triton server (PyTriton) on
loopback that `kedge infer --triton` queries, matching local inference.

Both run in the serving environment (`make serve-env`, Debian's Python: Triton's stub
must match the interpreter exactly); without it they skip.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from leanbundle import make_lean_bundle

from conftest import REPO

SERVE_PYTHON = Path(os.environ.get("KEDGE_SERVE_PYTHON", REPO / ".venv-serve" / "bin" / "python"))


@pytest.fixture(scope="module")
def serve_python() -> Path:
    if not SERVE_PYTHON.exists():
        pytest.skip(f"no serving environment at {SERVE_PYTHON} (make serve-env)")
    return SERVE_PYTHON


@pytest.fixture(scope="module")
def lean(tmp_path_factory, synthetic_data) -> Path:
    return make_lean_bundle(tmp_path_factory.mktemp("triton") / "tiny", synthetic_data)


PARSE = """
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
config = text_format.Parse(open(sys.argv[1]).read(), model_config_pb2.ModelConfig())
print(json.dumps(json_format.MessageToDict(config)))
"""


def test_repository_config_parses_with_tritons_protobuf(lean, serve_python, tmp_path) -> None:
    repo = tmp_path / "repo"
    result = subprocess.run([sys.executable, "-m", "kedge.cli", "export", str(lean), "--triton", str(repo),
                             "--max-batch", "8", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (repo / "tiny" / "1" / "model.onnx").read_bytes() == (lean / "model.onnx").read_bytes()
    parsed = subprocess.run([str(serve_python), "-c", PARSE, str(repo / "tiny" / "config.pbtxt")],
                            capture_output=True, text=True, timeout=120)
    assert parsed.returncode == 0, parsed.stderr
    config = json.loads(parsed.stdout)
    assert config["name"] == "tiny" and config["platform"] == "onnxruntime_onnx" and config["maxBatchSize"] == 8
    assert config["input"] == [{"name": "image", "dataType": "TYPE_FP32", "dims": ["224", "224", "3"]}]
    assert config["output"] == [{"name": "probabilities", "dataType": "TYPE_FP32", "dims": ["3"]}]
    assert config["dynamicBatching"]["preferredBatchSize"] == [1, 4, 8]
    assert config["parameters"]["classes"]["stringValue"] == "Normal,Osteopenia,Osteoporosis"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_on_a_real_triton_and_infer_matches_local(lean, serve_python, synthetic_data, tmp_path) -> None:
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(serve_python), "-m", "kedge.cli", "serve", str(lean), "--http-port", str(http),
                               "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--precision", "fp32"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/tiny/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Triton did not become ready in 120 s"
            time.sleep(0.5)
        images = [str(p) for p in sorted(synthetic_data.rglob("*.png"))[:12]]
        common = ["-m", "kedge.cli", "infer", *images, "--model", str(lean), "--json", "--batch-size", "5"]
        remote = subprocess.run([str(serve_python), *common, "--triton", f"http://127.0.0.1:{http}"],
                                capture_output=True, text=True, timeout=300)
        local = subprocess.run([sys.executable, *common, "--precision", "fp32"], capture_output=True, text=True,
                               timeout=300)
        assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
        served, here = json.loads(remote.stdout), json.loads(local.stdout)
        assert [r["path"] for r in served] == images and {r["backend"] for r in served} == {"triton"}
        for a, b in zip(served, here, strict=True):
            assert a["label"] == b["label"]
            assert all(abs(a["probabilities"][c] - b["probabilities"][c]) < 1e-5 for c in b["probabilities"])
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            assert b"nv_inference_request_success" in r.read()
        server.send_signal(signal.SIGTERM)  # as Kubernetes or systemd stop it: to the kedge process only
        server.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _group_alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group_alive(server.pid), "tritonserver outlived kedge serve"
        assert "SIGTERM received: stopping Triton" in (tmp_path / "serve.log").read_text()  # the clean path
    finally:
        if _group_alive(server.pid):
            os.killpg(server.pid, signal.SIGKILL)
        if server.poll() is None:
            server.wait(timeout=30)
        log.close()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
