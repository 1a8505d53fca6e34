"""Does tuning ONNX Runtime close its gap to OpenVINO on the CPU? (issue 12, item 6)

Times batch-1 inference of ONNX files side by side in one process: ONNX Runtime with
its defaults and with the session options that matter on a CPU (graph optimisation
level, intra-op threads, spinning, sequential execution, QDQ fusion into integer
kernels off, as a control), next to OpenVINO's default (LATENCY hint, no precision
hint) and kedge's explicit OpenVINO settings. Rounds are interleaved so a load change
on a shared machine hits every configuration alike; the median of the rounds' p50s
is printed.

    .venv/bin/python docs/results/ort_session_options.py runtime/models/*/model*.onnx
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort


def ort_session(path: str, level: str = "all", threads: int = 0, spin: bool = True,
                qdq: bool = True) -> Callable[[np.ndarray], object]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if not qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def openvino_session(path: str, hint: str | None) -> Callable[[np.ndarray], object]:
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_PRECISION_HINT": hint} if hint else {})}
    request = ov.Core().compile_model(path, "CPU", config).create_infer_request()
    return lambda x: request.infer({0: x})


def main(paths: list[str], rounds: int = 3, runs: int = 10) -> None:
    x = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    for path in paths:
        configs = {
            "ort default (all, all cores, spinning)": ort_session(path),
            "ort extended": ort_session(path, "extended"),
            "ort basic": ort_session(path, "basic"),
            "ort 2 threads": ort_session(path, threads=2),
            "ort 1 thread": ort_session(path, threads=1),
            "ort no spinning": ort_session(path, spin=False),
            "ort QDQ not fused (control)": ort_session(path, qdq=False),
            "openvino default (LATENCY, no precision hint)": openvino_session(path, None),
            "openvino f32 hint (kedge's fp32/int8)": openvino_session(path, "f32"),
        }
        p50s: dict[str, list[float]] = {k: [] for k in configs}
        for call in configs.values():
            for _ in range(3):
                call(x)
        for _ in range(rounds):
            for label, call in configs.items():
                ms = []
                for _ in range(runs):
                    start = time.perf_counter()
                    call(x)
                    ms.append((time.perf_counter() - start) * 1000)
                p50s[label].append(float(np.median(ms)))
        best = min(float(np.median(v)) for v in p50s.values())
        print(f"\n{path}  (batch 1, median of {rounds} rounds of {runs}-run p50s)")
        for label, values in p50s.items():
            p50 = float(np.median(values))
            print(f"  {label:<48}{p50:8.2f} ms {p50 / best:6.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
