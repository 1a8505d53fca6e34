"""`kedge verify BUNDLE`: everything a device owner can prove about a bundle on their machine.

In order: check-trt on the TensorRT-bound ONNX files; the engines this machine can
build (TensorRT and a GPU present), or plainly why none was built; every runnable
(backend, form, precision) pair on the golden set stored in the bundle; parity of
each pair on a labelled folder (--data); a short benchmark of each pair. One report,
each check passed, failed, or not checkable here (with the reason). Exit 0 when
nothing failed and at least one check passed: a verify that could check nothing
proves nothing, so it exits 1 too. A pair whose parity the bundle records as FAILED (so `auto` never
runs it) is still run and reported, as a known failure that does not fail verify.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kedge.runtime.bundle.manifest import Bundle
from kedge.runtime.errors import KedgeError

PASSED, FAILED, NOT_CHECKABLE = "passed", "failed", "not checkable here"
KNOWN_FAILURE = "failed as recorded"  # the bundle's parity already FAILED this pair; auto never runs it
Log = Callable[[str], None]


@dataclass
class Check:
    name: str
    status: str
    detail: str
    data: Any = None


@dataclass
class VerifyReport:
    bundle: str
    machine: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    bench: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Nothing failed and something was checked."""
        return all(c.status != FAILED for c in self.checks) and any(c.status == PASSED for c in self.checks)

    @property
    def verdict(self) -> str:
        if any(c.status == FAILED for c in self.checks):
            return "FAILED"
        return "PASSED" if self.passed else "NOTHING CHECKABLE HERE (none failed)"

    def add(self, name: str, status: str, detail: str, data: Any = None) -> None:
        self.checks.append(Check(name, status, detail, data))

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "passed": self.passed, "verdict": self.verdict, "machine": self.machine,
                "checks": [asdict(c) for c in self.checks], "bench": self.bench}

    def markdown(self) -> str:
        m = self.machine
        lines = [f"# kedge verify: {Path(self.bundle).name}", "",
                 f"- bundle: `{self.bundle}`", f"- kedge {m['kedge']}, at {m['at']}",
                 f"- CPU: {m['cpu']}; load {m['load']}", f"- GPU: {m['gpu'] or 'none visible'}",
                 f"- TensorRT: {m['tensorrt'] or 'not installed'}; ONNX Runtime {m['onnxruntime'] or 'not installed'}",
                 "", f"**Result: {self.verdict}** "
                 f"({sum(c.status == PASSED for c in self.checks)} passed, "
                 f"{sum(c.status == FAILED for c in self.checks)} failed, "
                 f"{sum(c.status == NOT_CHECKABLE for c in self.checks)} not checkable here, "
                 f"{sum(c.status == KNOWN_FAILURE for c in self.checks)} failed as recorded)", "",
                 "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {c.status} | {c.detail.replace('|', '/')} |" for c in self.checks]
        if self.bench:
            lines += ["", "## Benchmark (preprocessed batches, ms per batch; this machine's load applies)", "",
                      "| backend | form | precision | batch | mean ms | p90 ms | images/s |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['backend']} | {r['form']} | {r['precision']} | {r['batch_size']} | {r['mean_ms']:.2f} | "
                      f"{r['p90_ms']:.2f} | "
                      f"{r['throughput']:.1f} |" for r in self.bench]
        return "\n".join(lines) + "\n"

    def lines(self) -> list[str]:
        out = [f"{c.status.upper():<19} {c.name}: {c.detail}" for c in self.checks]
        out += [f"bench  {r['backend'] + ' ' + r['form'] + ' ' + r['precision']:<32} batch {r['batch_size']:>3}: "
                f"{r['mean_ms']:8.2f} ms "
                f"({r['throughput']:.1f} img/s)" for r in self.bench]
        out.append(f"verify {self.bundle}: {self.verdict}")
        return out


def machine_facts() -> dict[str, Any]:
    import kedge
    from kedge.runtime.backends import backend_class
    from kedge.runtime.cpu import cpu_info
    from kedge.runtime.info import gpu_info

    ort, trt = backend_class("onnxruntime").info(), backend_class("tensorrt").info()
    gpu, cpu = gpu_info(), cpu_info()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"kedge": kedge.__version__, "at": now,
            "cpu": f"{cpu['model']}, {cpu['cores']} cores, {cpu['machine']}", "load": load,
            "gpu": f"{gpu['name']} (compute capability {gpu['compute_capability']})" if gpu else None,
            "tensorrt": trt["version"] if trt and trt.get("version") else None,
            "tensorrt_problem": trt.get("problem") if trt else None,
            "onnxruntime": ort["version"] if ort else None}


def verify_bundle(bundle: Bundle, data: Path | None = None, split: str | None = None,
                  build: bool = True, bench_iterations: int = 20, progress: bool = False,
                  log: Log | None = None) -> VerifyReport:
    say = log or (lambda _m: None)
    report = VerifyReport(str(bundle.path), machine_facts())
    _check_trt(bundle, report)
    if build:
        _build_engines(bundle, report, say)
    _golden(bundle, report, say)
    _envelope(bundle, report)
    _parity(bundle, data, split, report, progress, say)
    if bench_iterations > 0:
        _bench(bundle, report, bench_iterations, say)
    return report


def _check_trt(bundle: Bundle, report: VerifyReport) -> None:
    from importlib.util import find_spec

    from kedge.export.trtcheck import TRT_VERSIONS, check_bundle

    if find_spec("onnx") is None:
        report.add("check-trt", NOT_CHECKABLE, "the onnx package is not installed (pip install kedge[cpu])")
        return
    installed = report.machine["tensorrt"]
    versions = TRT_VERSIONS if not installed else (("11",) if int(installed.split(".")[0]) >= 11 else ("10.3",))
    try:
        result = check_bundle(bundle, versions)
    except KedgeError as err:
        report.add("check-trt", NOT_CHECKABLE, str(err))
        return
    files = ", ".join(f"{name} ({status})" for name, status in result.files.items())
    detail = f"TensorRT {' and '.join(versions)}: {len(result.errors)} errors, " \
             f"{len(result.findings) - len(result.errors)} warnings; {files}"
    report.add("check-trt", PASSED if result.passed else FAILED, detail, result.to_json())


def _build_engines(bundle: Bundle, report: VerifyReport, say: Log) -> None:
    """Build every engine this machine's TensorRT can build from the files the bundle has."""
    from kedge.export.engine import build_engine, build_plan
    from kedge.runtime.bundle.engines import ENGINE_DIR
    from kedge.runtime.bundle.forms import engine_precisions
    from kedge.runtime.cuda import has_gpu

    version = report.machine["tensorrt"]
    if version is None or not has_gpu():
        why = (report.machine["tensorrt_problem"] or "TensorRT is not installed") if version is None \
            else "no CUDA GPU is visible"
        report.add("engines", NOT_CHECKABLE, f"no engine was built on this machine: {why}")
        return
    artifacts = bundle.artifacts
    engines = bundle.engines
    for precision in engine_precisions():
        key, path = build_plan(precision, int(version.split(".")[0]))
        name = f"engine {precision}"
        if key not in artifacts:
            report.add(name, NOT_CHECKABLE, f"the bundle has no {key} to build it from")
            continue
        say(f"verify: building the {precision} engine from {artifacts[key]} ({path}, TensorRT {version})")
        try:
            engine_path, info = build_engine(bundle.file(key), bundle.path, bundle.name, precision, path,
                                             progress=False)
        except KedgeError as err:
            report.add(name, FAILED, str(err))
            continue
        engines[engine_path.name] = f"{ENGINE_DIR}/{engine_path.name}"
        report.add(name, PASSED, f"built {engine_path.name} in {info.build_seconds:.0f} s")
    if engines != bundle.engines:
        bundle.update(engines=engines)


def _status(bundle: Bundle, pair: Any, passed: bool) -> str:
    """PASSED, FAILED, or KNOWN_FAILURE for a pair the bundle's recorded parity already FAILED."""
    from kedge.runtime.checks.parity import FAILED as RECORDED_FAILED
    from kedge.runtime.checks.parity import status

    if passed:
        return PASSED
    return KNOWN_FAILURE if status(bundle, pair)[0] == RECORDED_FAILED else FAILED


def _golden(bundle: Bundle, report: VerifyReport, say: Log) -> None:
    """Every runnable pair on the golden set, through the same check (and per-machine cache)
    that `auto` uses, each shown with its parity recorded at export."""
    from kedge.runtime.backends import runnable_pairs
    from kedge.runtime.checks.choice import check_here
    from kedge.runtime.checks.parity import status

    if not bundle.golden:
        report.add("golden set", NOT_CHECKABLE, "the bundle has no golden set (run `kedge golden BUNDLE` where it "
                   "was exported, with model.keras beside it)")
        return
    pairs = runnable_pairs(bundle)
    say(f"verify: golden set on {', '.join(str(p) for p in pairs)}")
    here = check_here(bundle, pairs, threads=None)
    for pair in pairs:
        result = here[pair.key]
        parity_state, parity_detail = status(bundle, pair)
        detail = f"{result.detail}; parity at export: {parity_state} ({parity_detail})"
        if result.passed is None:
            report.add(f"golden {pair}", NOT_CHECKABLE, detail)
            continue
        report.add(f"golden {pair}", _status(bundle, pair, result.passed), detail,
                   {**(result.golden or {}), "passed_here": result.passed, "parity_at_export": parity_state,
                    "ms": result.ms})
    if not any(c.name.startswith("engine ") and c.status == PASSED for c in report.checks):
        report.add("golden engines", NOT_CHECKABLE, "no TensorRT engine runs here, so none was compared")


def _envelope(bundle: Bundle, report: VerifyReport) -> None:
    """The input gate runs beside every form (docs/envelope.md): one check, not one per pair."""
    from kedge.runtime.envelope.report import device_check

    passed, detail = device_check(bundle)
    report.add("input envelope", NOT_CHECKABLE if passed is None else PASSED if passed else FAILED, detail)


def _parity(bundle: Bundle, data: Path | None, split: str | None, report: VerifyReport, progress: bool,
            say: Log) -> None:
    if data is None:
        report.add("parity", NOT_CHECKABLE, "no labelled folder given (pass --data DIR, optionally --split)")
        return
    from kedge.runtime.backends import pair as make_pair
    from kedge.runtime.checks.parity import ParityRow, bundle_parity, format_table

    if not bundle.has("onnx_fp32"):
        _accuracy_against_record(bundle, data, split, report, progress, say)
        return
    say(f"verify: parity on {data}")
    result = bundle_parity(bundle, data, split, progress=progress, record=False)
    say(format_table([ParityRow(**r) for r in result["rows"]]))
    where = f"{result['n']} images of {data} ({result['split']}) vs {result['reference']}"
    for row in result["rows"][1:]:  # the first row is the reference itself
        pair = make_pair(row["backend"], row["form"], row["precision"])
        detail = where + ("" if row["passed"] else ": " + "; ".join(row["problems"] or []))
        report.add(f"parity {pair}", _status(bundle, pair, row["passed"]), detail, row)


def _bench(bundle: Bundle, report: VerifyReport, iterations: int, say: Log) -> None:
    from kedge.runtime.backends import runnable_pairs
    from kedge.runtime.checks.golden import draw, pool_densities
    from kedge.runtime.reports.bench import run_bench

    images = draw(pool_densities(4), seed=1).pngs
    pairs = runnable_pairs(bundle)
    say(f"verify: benchmarking {', '.join(str(p) for p in pairs)}")
    rows = run_bench(bundle, pairs, images, [1, 8], modes=("engine",), warmup=3, iterations=iterations)
    report.bench = [r.as_dict() for r in rows]


def _accuracy_against_record(bundle: Bundle, data: Path, split: str | None, report: VerifyReport, progress: bool,
                             say: Log) -> None:
    """Without an FP32 reference here (left out when shipped): each form's accuracy on --data
    against the accuracy the bundle's recorded parity gives for the same ONNX file on the same
    split, within parity's INT8 rule (1 point)."""
    from kedge.runtime.backends import runnable_pairs
    from kedge.runtime.bundle.engines import source_form_of
    from kedge.runtime.bundle.manifest import portable_path
    from kedge.runtime.checks.parity import THRESHOLDS
    from kedge.runtime.reports.evaluate import predict_items

    recorded = bundle.parity
    same_split = recorded.get("split") == (split or "all") and bool(recorded.get("data")) and \
        portable_path(str(recorded["data"])) == portable_path(data)  # recorded by name (by path before)
    rows = _recorded_rows(recorded.get("rows", [])) if same_split else {}
    items = bundle.labelled(data, split)
    limit = THRESHOLDS["int8"]["max_accuracy_drop"]
    for pair in runnable_pairs(bundle):
        source = source_form_of(bundle, pair) or pair.form.name
        say(f"verify: {pair} on {len(items)} images of {data}")
        with pair.open(bundle) as backend:
            predictions = predict_items(backend, items, 16, progress)
        labels = np.array([i.label for i in predictions.items])
        accuracy = float((predictions.probabilities.argmax(1) == labels).mean()) if len(labels) else 0.0
        name = f"parity {pair}"
        row = rows.get(pair.key) or rows.get(source)
        if row is None:
            why = "the bundle records no parity on this folder and split" if not same_split else \
                f"the recorded parity has no {source} row"
            report.add(name, NOT_CHECKABLE, f"accuracy {accuracy:.3f} on {len(labels)} images; no FP32 reference "
                       f"here and {why}")
            continue
        drop = abs(accuracy - row["accuracy"])
        report.add(name, _status(bundle, pair, drop <= limit + 1e-12),
                   f"accuracy {accuracy:.3f} on {len(labels)} images vs {row['accuracy']:.3f} recorded for {source} "
                   f"at shipping (within {limit * 100:g} point: {'yes' if drop <= limit + 1e-12 else 'no'})")


def _recorded_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Recorded parity rows by backend/form/precision, and by form (the ONNX Runtime row
    first: the accuracy of the file itself, which an engine built from it is held to)."""
    from kedge.runtime.checks.parity import row_key

    by_key = {row_key(r): r for r in rows}
    by_form: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: row_key(r).split("/")[0] != "onnxruntime"):
        by_form.setdefault(str(r["form"]), r)
    return {**by_form, **by_key}
