"""Latency and throughput of a bundle's forms, side by side in one run.

trtexec's practice: warm up, then time many iterations, and report mean, p50, p90,
p99 and throughput. Two modes are timed separately:

- `engine`: a preprocessed batch in, probabilities out (the backend alone);
- `end_to_end`: the files' bytes in, probabilities out, so JPEG decoding and
  preprocessing count (run inline, one file after another, as one request sees it).

Every target is timed in the same process, one after another on the same inputs, so
the ratios (against the fastest, and against Keras where TensorFlow is installed)
compare like with like on this machine. `time_preprocess` times the full and the
reduced JPEG decode the same way.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kedge.runtime.backends.base import Backend
from kedge.runtime.preprocess import preprocess

MODES = ("engine", "end_to_end")


@dataclass
class BenchRow:
    backend: str
    form: str
    batch_size: int
    mode: str
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # images per second, from the mean
    vs_fastest: float | None = None  # this row's mean over the fastest row's (same mode and batch): 1.0 is fastest
    speedup_vs_keras: float | None = None  # Keras's mean over this row's (same mode and batch)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(call: Callable[[], object], warmup: int, iterations: int) -> np.ndarray:
    """Milliseconds per call, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    ms = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        call()
        ms[i] = (time.perf_counter() - start) * 1000
    return ms


def summarize(ms: np.ndarray, batch_size: int) -> dict[str, float]:
    mean = float(ms.mean())
    return {"mean_ms": mean, "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "throughput": batch_size * 1000.0 / mean}


@dataclass(frozen=True)
class Target:
    """One thing to time: a form of the bundle, or the Keras original."""

    form: str
    backend: str
    open: Callable[[], Backend]


def run_bench(targets: Sequence[Target], images: Sequence[bytes], batch_sizes: Sequence[int],
              modes: Sequence[str] = MODES, warmup: int = 10, iterations: int = 100,
              progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Time every target at every batch size in every mode; `images` are encoded files
    (end_to_end decodes them; engine mode uses their preprocessed tensors)."""
    tensors = [preprocess(data) for data in images]
    rows = []
    for target in targets:
        with target.open() as backend:
            for batch_size in batch_sizes:
                picks = [i % len(images) for i in range(batch_size)]
                batch = np.stack([tensors[i] for i in picks])
                files = [images[i] for i in picks]
                calls = {"engine": lambda b=batch: backend.infer(b),
                         "end_to_end": lambda f=files: backend.infer(np.stack([preprocess(d) for d in f]))}
                for mode in modes:
                    if progress is not None:
                        progress(f"{target.form} batch {batch_size} {mode}")
                    ms = time_calls(calls[mode], warmup, iterations)
                    rows.append(BenchRow(target.backend, target.form, batch_size, mode, iterations,
                                         **summarize(ms, batch_size)))
    add_ratios(rows)
    return rows


def add_ratios(rows: list[BenchRow]) -> None:
    """Ratios within each (mode, batch size) group: against its fastest row and its Keras row."""
    for key in {(r.mode, r.batch_size) for r in rows}:
        group = [r for r in rows if (r.mode, r.batch_size) == key]
        fastest = min(r.mean_ms for r in group)
        keras = next((r.mean_ms for r in group if r.form == "keras"), None)
        for r in group:
            r.vs_fastest = r.mean_ms / fastest
            r.speedup_vs_keras = keras / r.mean_ms if keras is not None else None


def time_preprocess(images: Sequence[bytes], warmup: int = 3, iterations: int = 30) -> list[dict[str, Any]]:
    """Decode + preprocess of each image, full JPEG decode vs reduced, side by side."""
    rows: list[dict[str, Any]] = []
    for reduced in (False, True):
        def decode_all(r: bool = reduced) -> None:
            for data in images:
                preprocess(data, reduced=r)

        per_image = time_calls(decode_all, warmup, iterations) / len(images)
        rows.append({"decode": "reduced (DCT scaling)" if reduced else "full",
                     "mean_ms": float(per_image.mean()), "p50_ms": float(np.percentile(per_image, 50)),
                     "p90_ms": float(np.percentile(per_image, 90)), "p99_ms": float(np.percentile(per_image, 99))})
    rows[1]["speedup"] = rows[0]["mean_ms"] / rows[1]["mean_ms"]
    return rows


def synthetic_jpeg(side: int = 2048, seed: int = 0) -> bytes:
    """A clinic-sized synthetic knee radiograph as a JPEG (quality 95), for end-to-end timing."""
    import cv2

    from kedge.train.synthetic import knee_radiograph

    image = knee_radiograph(0.5, np.random.default_rng(seed), size=side)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok, "OpenCV could not encode a JPEG"
    return encoded.tobytes()


def plot(rows: Sequence[BenchRow], path: Any, title: str) -> None:
    """Bar chart of mean latency per form, one panel per mode, bars per batch size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from kedge.runtime.errors import KedgeError

        raise KedgeError("--plot needs matplotlib (pip install matplotlib)") from None
    from kedge.runtime.bundle import atomic_path

    modes = [m for m in MODES if any(r.mode == m for r in rows)]
    forms = list(dict.fromkeys(r.form for r in rows))
    sizes = sorted({r.batch_size for r in rows})
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 3.8), squeeze=False)
    width = 0.8 / len(sizes)
    for ax, mode in zip(axes[0], modes, strict=True):
        for j, size in enumerate(sizes):
            values = [next((r.mean_ms / size for r in rows if (r.form, r.mode, r.batch_size) == (f, mode, size)),
                           np.nan) for f in forms]
            ax.bar(np.arange(len(forms)) + j * width, values, width, label=f"batch {size}")
        ax.set_xticks(np.arange(len(forms)) + width * (len(sizes) - 1) / 2, forms, rotation=20)
        ax.set_ylabel("ms per image (mean)")
        ax.set_title(mode.replace("_", "-"))
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
