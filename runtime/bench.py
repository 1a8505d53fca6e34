"""Latency of bundle forms, side by side in one run (trtexec's practice: warm-up, then
many timed iterations, percentiles and throughput). Engine-only: the input is a fixed
preprocessed batch, so decoding is not timed. Forms are timed one after another in the
same process, so the ratios compare like with like on this machine."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from kedge.runtime.backends.base import Backend


def time_backend(backend: Backend, batch: np.ndarray, warmup: int = 10, iterations: int = 100) -> dict[str, Any]:
    for _ in range(warmup):
        backend.infer(batch)
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        backend.infer(batch)
        seconds.append(time.perf_counter() - start)
    ms = np.array(seconds) * 1000
    return {"batch": len(batch), "iterations": iterations, "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "throughput_ips": float(len(batch) * 1000 / ms.mean())}


def compare_forms(bundle: Any, forms: Sequence[str], batch_size: int = 1, warmup: int = 10,
                  iterations: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """Time each form on the same random batch; `speedup` is the first form's p50 over this one's."""
    from kedge.runtime.forms import open_form

    batch = np.random.default_rng(seed).random((batch_size, 224, 224, 3), dtype=np.float32)
    rows = []
    for form in forms:
        with open_form(bundle, form) as backend:
            rows.append({"form": form, "backend": backend.name, **time_backend(backend, batch, warmup, iterations)})
    for row in rows:
        row["speedup_vs_" + rows[0]["form"]] = rows[0]["p50_ms"] / row["p50_ms"]
    return rows
