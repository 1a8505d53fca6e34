"""Which tensors INT8 hurts, and what to keep in float so the TensorRT Q/DQ form passes parity.

* `sensitivity_table`: ONNX Runtime's qdq_loss_debug runs the FP32 model and the Q/DQ
  model on the same validation images, keeping every intermediate tensor, and gives per
  tensor the signal-to-quantization-noise ratio (dB) of its own Q/DQ pair (`qdq_sqnr`)
  and of the Q/DQ model against the FP32 model there (`xmodel_sqnr`, the error
  accumulated up to that point). Low is bad.
* `greedy_keep_float`: the nodes around the noisiest Q/DQ pairs (the tensor's writer and
  readers) are kept in float, one tensor at a time, worst first, until the Q/DQ form passes parity on the validation
  images (against the reference, with the INT8 thresholds of runtime/checks/parity.py).
* `choose_method`: each calibration method's Q/DQ form scored on the validation images;
  the passing one with the best agreement (then the smallest mean |dp|) wins.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.errors import KedgeError

Log = Callable[[str], None]
MAX_STEPS = 12


@dataclass(frozen=True)
class TensorSqnr:
    tensor: str
    nodes: tuple[str, ...]  # the FP32 model's nodes writing or reading it: what keep-float excludes
    qdq_sqnr: float
    xmodel_sqnr: float | None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "nodes": list(self.nodes)}


class _Feeds:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed images."""

    def __init__(self, batch: np.ndarray) -> None:
        self._feeds = iter([{"image": batch[i : i + 1]} for i in range(len(batch))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def __iter__(self) -> Any:  # collect_activations iterates the reader
        return self._feeds


def sensitivity_table(fp32_path: str | os.PathLike[str], qdq_path: str | os.PathLike[str],
                      batch: np.ndarray) -> list[TensorSqnr]:
    """Per-tensor SQNR of the Q/DQ model on `batch`, worst (lowest own SQNR) first."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    from kedge.calibration.ranges import _quiet_stdout

    with tempfile.TemporaryDirectory(prefix="kedge-sqnr-") as scratch, _quiet_stdout():
        float_aug, qdq_aug = Path(scratch) / "float.onnx", Path(scratch) / "qdq.onnx"
        modify_model_output_intermediate_tensors(os.fspath(fp32_path), float_aug)
        modify_model_output_intermediate_tensors(os.fspath(qdq_path), qdq_aug)
        providers = ["CPUExecutionProvider"]
        float_acts = collect_activations(str(float_aug), _Feeds(batch), execution_providers=providers)
        qdq_acts = collect_activations(str(qdq_aug), _Feeds(batch), execution_providers=providers)
        errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    graph = onnx.load(os.fspath(fp32_path), load_external_data=False).graph
    touching: dict[str, list[str]] = {}  # a Q/DQ pair goes away only when its writer and readers are all excluded
    for node in graph.node:
        for name in [*node.output, *node.input]:
            if node.name and node.name not in touching.setdefault(name, []):
                touching[name].append(node.name)
    rows = [TensorSqnr(name, tuple(touching.get(name, [])), float(e["qdq_err"]),
                       float(e["xmodel_err"]) if "xmodel_err" in e else None)
            for name, e in errors.items()]
    return sorted(rows, key=lambda r: (r.qdq_sqnr, r.tensor))


def format_table(rows: Sequence[TensorSqnr], top: int = 15) -> str:
    lines = [f"{'SQNR own dB':>11}{'vs FP32 dB':>11}  tensor -> nodes to keep in float to drop its Q/DQ"]
    for r in rows[:top]:
        xmodel = "-" if r.xmodel_sqnr is None else f"{r.xmodel_sqnr:.1f}"
        readers = ", ".join(r.nodes) or "(graph input)"
        lines.append(f"{r.qdq_sqnr:>11.1f}{xmodel:>11}  {r.tensor} -> {readers}")
    return "\n".join(lines)


def plot_table(rows: Sequence[TensorSqnr], path: str | os.PathLike[str], top: int = 30) -> None:
    """A horizontal bar chart of the worst tensors' SQNR (matplotlib, the [train] or [explain] extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KedgeError("--sensitivity-plot needs matplotlib (install kedge[train] or kedge[explain])") from None
    from kedge.runtime.bundle.manifest import atomic_path

    worst = list(rows[:top])[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(worst) + 1.2))
    ax.barh([r.tensor[-60:] for r in worst], [r.qdq_sqnr for r in worst], label="own Q/DQ")
    ax.plot([r.xmodel_sqnr if r.xmodel_sqnr is not None else np.nan for r in worst], range(len(worst)), "k.",
            label="Q/DQ model vs FP32")
    ax.set_xlabel("SQNR, dB (low = sensitive)")
    ax.tick_params(axis="y", labelsize=6)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


@dataclass
class Validation:
    """Validation images with the reference's predictions, computed once and reused for every candidate."""

    items: list[Any]
    reference: Any  # runtime.reports.evaluate.Predictions
    classes: list[str]

    def score(self, onnx_path: str | os.PathLike[str]) -> Any:
        """A Q/DQ file on the validation images: a runtime.checks.parity.ParityRow with INT8 thresholds."""
        from kedge.runtime.backends.onnxruntime import CPU, OnnxRuntimeSession
        from kedge.runtime.checks.parity import compare
        from kedge.runtime.reports.evaluate import predict_items

        with OnnxRuntimeSession(onnx_path, [CPU], label="candidate") as backend:
            predictions = predict_items(backend, self.reference.items, 16, progress=False)
        return compare("candidate", "onnxruntime", "int8", predictions, self.reference, self.classes)

    def tensors(self, count: int) -> np.ndarray:
        from kedge.runtime.inputs.preprocess import preprocess

        step = max(1, len(self.reference.items) // count)
        return np.stack([preprocess(i.path) for i in self.reference.items[::step][:count]])


def validation_set(items: Sequence[Any], classes: Sequence[str], open_reference: Callable[[], Any]) -> Validation:
    from kedge.runtime.reports.evaluate import predict_items

    if not items:
        raise KedgeError("the INT8 tools need labelled validation images (--data DIR, --split val)")
    with open_reference() as backend:
        reference = predict_items(backend, items, 16, progress=False)
    return Validation(list(reference.items), reference, list(classes))


Quantizer = Callable[[Sequence[str], Path], Any]  # (nodes kept in float, output path) -> description


def greedy_keep_float(rows: Sequence[TensorSqnr], quantize_with: Quantizer, validation: Validation,
                      log: Log, start: Sequence[str] = (), max_steps: int = MAX_STEPS,
                      max_abs_diff: float | None = None) -> dict[str, Any]:
    """Keep the nodes around the noisiest tensors in float, worst first, until parity passes
    (and, with `max_abs_diff`, until no validation probability moves more than that: a small
    validation split can pass with one borderline image away from a flip)."""
    kept = list(start)
    steps = []
    with tempfile.TemporaryDirectory(prefix="kedge-keep-") as scratch:
        candidate = Path(scratch) / "candidate.onnx"
        queue = [r for r in rows if r.nodes]
        for step in range(max_steps + 1):
            quantize_with(kept, candidate)
            row = validation.score(candidate)
            passed = row.passed and (max_abs_diff is None or row.max_abs_diff <= max_abs_diff)
            steps.append({"kept_in_float": list(kept), "agreement": row.agreement, "accuracy": row.accuracy,
                          "max_abs_diff": row.max_abs_diff, "passed": passed})
            log(f"keep-float step {step}: {len(kept)} nodes in float, agreement {row.agreement:.2%}, "
                f"max |dp| {row.max_abs_diff:.3f}: {'PASSED' if passed else 'not yet'}")
            if passed or not queue:
                break
            worst = queue.pop(0)
            kept += [n for n in worst.nodes if n not in kept]
    return {"mode": "auto", "nodes": kept, "passed": steps[-1]["passed"], "max_abs_diff_goal": max_abs_diff,
            "steps": steps}


def choose_method(methods: Sequence[str], candidate_for: Callable[[str, Path], None], validation: Validation,
                  log: Log) -> tuple[str, dict[str, Any]]:
    """Score each method's Q/DQ form on the validation images; the best passing one (else the best) wins."""
    scores: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kedge-method-") as scratch:
        for method in methods:
            path = Path(scratch) / f"{method}.onnx"
            candidate_for(method, path)
            row = validation.score(path)
            scores[method] = {"agreement": row.agreement, "mean_abs_diff": row.mean_abs_diff,
                              "max_abs_diff": row.max_abs_diff, "accuracy": row.accuracy, "passed": row.passed}
            log(f"calibration method {method}: agreement {row.agreement:.2%}, mean |dp| {row.mean_abs_diff:.4f}"
                f"{' (passes)' if row.passed else ''}")
    best = max(scores, key=lambda m: (scores[m]["passed"], scores[m]["agreement"], -scores[m]["mean_abs_diff"]))
    return best, scores
