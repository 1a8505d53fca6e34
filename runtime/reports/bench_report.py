"""`kedge bench`'s report: each model's timed pairs, the input gate and decoding, as text
or JSON. The timing itself is runtime/reports/bench.py's."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kedge.runtime.backends import Pair
from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.inputs.folders import expand_inputs
from kedge.runtime.inputs.preprocess import preprocess, read_bytes
from kedge.runtime.reports import bench


def bench_images(inputs: Sequence[str]) -> list[bytes]:
    """The encoded files end_to_end decodes (each preprocessed once first, so a bad file fails
    here with its name, before any timing), or without inputs one synthetic 2048 px JPEG."""
    if not inputs:
        return [bench.synthetic_jpeg()]
    paths = expand_inputs(inputs)
    images = [read_bytes(p) for p in paths]
    for path, data in zip(paths, images, strict=True):
        preprocess(data, str(path))
    return images


def bench_models(bundles: Sequence[Bundle], pairs_for: Callable[[Bundle], list[Pair]],
                 images: Sequence[bytes], sizes: Sequence[int], modes: Sequence[str], warmup: int, iterations: int,
                 threads: int | None = None, cuda_graph: bool = False, plot: Path | None = None,
                 log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Per model: its timed rows (the pairs `pairs_for` gives, `auto`'s marked), auto against
    the baseline (OpenVINO's default), and the input gate. With `plot`, a chart per model
    (PATH itself for one model, PATH.<model>.png for several)."""
    reports = []
    for bundle in bundles:
        progress = None if log is None else (lambda what, b=bundle: log(f"{b.name}: timing {what}"))
        rows = bench.run_bench(bundle, pairs_for(bundle), images, sizes, modes, warmup, iterations, threads,
                               cuda_graph, bench.auto_key(bundle, threads), progress)
        reports.append({"model": bundle.name, "rows": rows, "auto_vs_openvino_default": bench.auto_vs_baseline(rows),
                        "input_gate": bench.time_gate(bundle, images)})
        if plot is not None:
            chart = plot if len(bundles) == 1 else plot.with_name(f"{plot.stem}.{bundle.name}{plot.suffix}")
            bench.plot(rows, chart, f"{bundle.name}: mean latency per image")
    return reports


def report_json(reports: Sequence[dict[str, Any]], decode: list[dict[str, Any]], images: int,
                machine: str) -> dict[str, Any]:
    return {"models": [{**r, "rows": [row.as_dict() for row in r["rows"]]} for r in reports],
            "preprocess": decode, "images": images, "machine": machine}


def format_report(reports: Sequence[dict[str, Any]], decode: list[dict[str, Any]], machine: str, warmup: int,
                  iterations: int) -> str:
    lines = [f"{machine}; {warmup} warm-up + {iterations} timed iterations; * = the pair `kedge infer` picks"]
    for report in reports:
        lines += ["", report["model"], *bench.format_rows(report["rows"])]
        for c in report["auto_vs_openvino_default"]:
            lines.append(f"  {c['mode']}: auto ({c['auto']}) p50 {c['auto_p50_ms']:.2f} ms vs {c['baseline']} "
                         f"{c['baseline_p50_ms']:.2f} ms: {c['ratio']:.2f}x")
        gate = report["input_gate"]
        lines.append("  input gate (envelope, the same for every form): " + (
            f"mean {gate['mean_ms']:.2f} ms, p50 {gate['p50_ms']:.2f} ms per image, on top of the rows above"
            if gate else "none in this bundle (no input check)"))
    lines += ["", "decode + preprocess per image (ms): " + "; ".join(
        f"{d['decode']} mean {d['mean_ms']:.2f}, p50 {d['p50_ms']:.2f}" for d in decode)
        + f"; reduced is {decode[1]['speedup']:.2f}x faster"]
    return "\n".join(lines)
