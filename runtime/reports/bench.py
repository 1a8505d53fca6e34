"""Latency and throughput of a bundle's (backend, form, precision) pairs, side by side in one run.

trtexec's practice: warm up, then time many iterations, and report mean, p50, p90,
p99 and throughput. Two modes are timed separately:

- `engine`: a preprocessed batch in, probabilities out (the backend alone);
- `end_to_end`: the files' bytes in, probabilities out, so JPEG decoding and
  preprocessing count (run inline, one file after another, as one request sees it).

Every pair is timed in the same process, one after another on the same inputs, so
the ratios (against the fastest, and against the parity reference, Keras, where
TensorFlow is installed) compare like with like on this machine. What is timed comes
from the backend registry: each reference backend's form, every pair this machine can
run, and each backend's out-of-the-box `baseline` (OpenVINO's: LATENCY hint, no
precision hint) on every ONNX file, the setting a CPU user would reach for. Each row
says its parity status and which row `auto` picks.
`time_preprocess` times the full and the reduced JPEG decode the same way.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kedge.runtime.backends import REFERENCES, Pair, backend_class, names, runnable_pairs
from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.errors import KedgeError
from kedge.runtime.inputs.preprocess import preprocess

MODES = ("engine", "end_to_end")
BASELINE = "default"  # the precision label of a backend's out-of-the-box setting (its `baseline`)


@dataclass
class BenchRow:
    backend: str
    form: str
    precision: str
    parity: str  # passed, FAILED, not checked, reference, or baseline
    auto: bool  # the pair `kedge infer` picks by itself
    batch_size: int
    mode: str
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # images per second, from the mean
    vs_fastest: float | None = None  # this row's mean over the fastest row's (same mode and batch): 1.0 is fastest
    speedup_vs_keras: float | None = None  # the reference's (Keras's) mean over this row's (same mode and batch)

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


def standing(bundle: Bundle, pair: Pair) -> str:
    """A row's parity column: `reference`, `baseline`, or the pair's recorded parity status."""
    from kedge.runtime.checks.parity import status

    if pair.precision == BASELINE:
        return "baseline"
    if backend_class(pair.backend).reference:
        return "reference"
    return status(bundle, pair)[0]


def run_bench(bundle: Bundle, pairs: Sequence[Pair], images: Sequence[bytes], batch_sizes: Sequence[int],
              modes: Sequence[str] = MODES, warmup: int = 10, iterations: int = 100, threads: int | None = None,
              cuda_graph: bool = False, auto: str | None = None,
              progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """Time every pair at every batch size in every mode; `images` are encoded files
    (end_to_end decodes them; engine mode uses their preprocessed tensors). `auto` is the
    key of the pair `kedge infer` picks (`auto_key`), marked in its rows."""
    tensors = [preprocess(data) for data in images]
    rows = []
    for pair in pairs:
        state = standing(bundle, pair)
        with pair.open(bundle, threads, cuda_graph=cuda_graph) as backend:
            for batch_size in batch_sizes:
                picks = [i % len(images) for i in range(batch_size)]
                batch = np.stack([tensors[i] for i in picks])
                files = [images[i] for i in picks]
                calls = {"engine": lambda b=batch: backend.infer(b),
                         "end_to_end": lambda f=files: backend.infer(np.stack([preprocess(d) for d in f]))}
                for mode in modes:
                    if progress is not None:
                        progress(f"{pair} batch {batch_size} {mode}")
                    ms = time_calls(calls[mode], warmup, iterations)
                    rows.append(BenchRow(pair.backend, pair.form.name, pair.precision, state, pair.key == auto,
                                         batch_size, mode, iterations, **summarize(ms, batch_size)))
    add_ratios(rows)
    return rows


def add_ratios(rows: list[BenchRow]) -> None:
    """Ratios within each (mode, batch size) group: against its fastest row and its reference row."""
    for key in {(r.mode, r.batch_size) for r in rows}:
        group = [r for r in rows if (r.mode, r.batch_size) == key]
        fastest = min(r.mean_ms for r in group)
        reference = next((r.mean_ms for r in group if r.parity == "reference"), None)
        for r in group:
            r.vs_fastest = r.mean_ms / fastest
            r.speedup_vs_keras = reference / r.mean_ms if reference is not None else None


def time_preprocess(images: Sequence[bytes], warmup: int = 2, iterations: int = 10) -> list[dict[str, Any]]:
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


def time_gate(bundle: Bundle, images: Sequence[bytes], warmup: int = 2, iterations: int = 10) -> dict[str, Any] | None:
    """The input gate per image (its features and distance, on the preprocessed image), or
    None for a bundle without an envelope. It runs beside every form, so one row says it."""
    from kedge.runtime.envelope.gate import bundle_envelope

    envelope = bundle_envelope(bundle)
    if envelope is None:
        return None
    tensors = [preprocess(data)[None] for data in images]

    def check_all() -> None:
        for x in tensors:
            envelope.check(x)

    per_image = time_calls(check_all, warmup, iterations) / len(tensors)
    return {"mean_ms": float(per_image.mean()), "p50_ms": float(np.percentile(per_image, 50)),
            "p99_ms": float(np.percentile(per_image, 99))}


def synthetic_jpeg(side: int = 2048, seed: int = 0) -> bytes:
    """A clinic-sized greyscale radiograph-like JPEG (quality 95) for end-to-end timing: smooth
    bright shapes on a dark field plus film grain, so the JPEG is as costly to decode as a real
    one. (The runtime never imports kedge.train, which makes the training images.)"""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    image = 40 + 150 * np.exp(-((x - 0.5) ** 2) / 0.02) * (0.6 + 0.4 * np.cos(6 * y))  # a bone-like band
    image += 60 * np.exp(-(((x - 0.5) ** 2) + ((y - 0.5) ** 2)) / 0.01)  # the joint
    image += rng.normal(0, 12, (side, side))
    ok, encoded = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
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
    from kedge.runtime.bundle.manifest import atomic_path

    modes = [m for m in MODES if any(r.mode == m for r in rows)]
    forms = list(dict.fromkeys(_row_label(r) for r in rows))
    sizes = sorted({r.batch_size for r in rows})
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 3.8), squeeze=False)
    width = 0.8 / len(sizes)
    for ax, mode in zip(axes[0], modes, strict=True):
        for j, size in enumerate(sizes):
            values = [next((r.mean_ms / size for r in rows if (_row_label(r), r.mode, r.batch_size) == (f, mode, size)),
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


def _row_label(row: BenchRow) -> str:
    return row.form if row.parity == "reference" else f"{row.backend}\n{row.form} {row.precision}"


def auto_key(bundle: Bundle, threads: int | None = None) -> str | None:
    """The key of the pair `kedge infer` picks for this bundle; None when no pair passed parity."""
    from kedge.runtime.checks.choice import choose

    try:
        return choose(bundle, threads=threads).pair.key
    except KedgeError:
        return None


def bundle_pairs(bundle: Bundle, backends: Sequence[str] | None = None, precisions: Sequence[str] | None = None,
                 forms: Sequence[str] | None = None, baseline: bool = True) -> list[Pair]:
    """What `kedge bench` times for one bundle, from the registry: each usable reference
    backend's form (the Keras original, where TensorFlow and model.keras are here), every
    pair this machine can run from the bundle's forms, and each backend's baseline on each
    ONNX file it runs, filtered by backend, precision and form names (a backend this machine
    cannot use times nothing; `kedge info` says why)."""
    named = [n for n in names() if n not in REFERENCES or (backends is not None and n in backends)]  # Keras: if named
    usable = [n for n in named if backend_class(n).problem() is None]
    pairs = [Pair(n, spec, p) for n in usable if backend_class(n).reference
             for spec in backend_class(n).forms_in(bundle) for p in backend_class(n).precisions(spec)]
    pairs += runnable_pairs(bundle)
    if baseline:
        pairs += [Pair(n, spec, BASELINE) for n in usable if backend_class(n).baseline
                  for spec in backend_class(n).forms_in(bundle)]
    chosen = [p for p in pairs if (backends is None or p.backend in backends)
              and (forms is None or p.form.name in forms) and (precisions is None or p.precision in precisions)]
    if not chosen:
        raise KedgeError(f"{bundle.path}: nothing to time for those filters (see `kedge info` and `kedge export`)")
    return chosen


def auto_vs_baseline(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    """Per mode at batch 1: auto's p50 against the fastest baseline row's, OpenVINO out of the box
    (below 1: auto is faster)."""
    found = []
    for mode in MODES:
        group = [r for r in rows if r.mode == mode and r.batch_size == 1]
        auto = next((r for r in group if r.auto), None)
        base = min((r for r in group if r.parity == "baseline"), key=lambda r: r.p50_ms, default=None)
        if auto is not None and base is not None:
            found.append({"mode": mode, "auto": f"{auto.backend} {auto.form} {auto.precision}",
                          "auto_p50_ms": auto.p50_ms,
                          "baseline": f"{base.backend} {base.form} ({backend_class(base.backend).baseline})",
                          "baseline_p50_ms": base.p50_ms, "ratio": auto.p50_ms / base.p50_ms})
    return found


def format_rows(rows: Sequence[BenchRow]) -> list[str]:
    lines = [f"{'backend':<12}{'form':<14}{'prec':<8}{'parity':<13}{'batch':>5}  {'mode':<11}{'mean':>8}{'p50':>8}"
             f"{'p90':>8}{'p99':>8}{'img/s':>8}{'x fastest':>10}{'vs keras':>9}"]
    for r in sorted(rows, key=lambda r: (r.mode != "engine", r.batch_size)):
        keras = f"{r.speedup_vs_keras:.2f}x" if r.speedup_vs_keras is not None else "-"
        mark = "*" if r.auto else " "
        lines.append(f"{r.backend:<12}{r.form:<14}{r.precision:<8}{r.parity + mark:<13}{r.batch_size:>5}  "
                     f"{r.mode:<11}{r.mean_ms:>8.2f}{r.p50_ms:>8.2f}{r.p90_ms:>8.2f}{r.p99_ms:>8.2f}"
                     f"{r.throughput:>8.1f}{r.vs_fastest:>9.2f}x{keras:>9}")
    return lines
