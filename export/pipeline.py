"""`kedge export`: every form that applies on this machine, then the parity gate.

Steps, each skipped with a reason when this machine cannot do it:

1. Keras -> FP32 ONNX (needs TensorFlow), gated on max |dp| <= 1e-4 against Keras.
   Reused when the Keras file has not changed since the last export.
2. FP16 ONNX (--fp16), gated against the FP32 ONNX.
3. INT8 (--int8 --calib DIR): cached ranges, the TensorRT Q/DQ file, the CPU Q/DQ
   file and the TensorRT 10 calibration cache. The INT8 tools (calibration/sensitivity.py)
   score on --data/--split: --calib-method auto, --sensitivity, --keep-float.
4. `kedge check-trt` on every TensorRT-bound file (an error fails the export), then
   TensorRT engines (--engine; needs TensorRT and a GPU).
5. Parity of every form against the reference on a labelled folder (--data, or the
   calibration folder when it is labelled); the result goes into kedge.json and a
   failure is the exit status.

Every file is written atomically and kedge.json is rewritten after each step, so an
interrupted export leaves the bundle consistent: no partial file under a final name,
no manifest entry for a file that is not there. Derived forms record the sha256 of
the FP32 ONNX they came from; when that changes, stale ones are removed.
"""
from __future__ import annotations

import datetime
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedge.runtime.bundle import Bundle, load_bundle, portable_path, sha256_file, write_manifest
from kedge.runtime.errors import KedgeError
from kedge.runtime.forms import FORMS

ONNX_NAME = FORMS["onnx-fp32"].file  # file names come from the one table of forms
FP16_NAME = FORMS["onnx-fp16"].file
INT8_QDQ_NAME = FORMS["onnx-int8-qdq"].file
INT8_CPU_NAME = FORMS["onnx-int8"].file
CALIBRATION_DIR = "calibration"
FP16_GATE = 1e-2  # max |dp| of FP16 against FP32 on the gate images
DERIVED = ("onnx_fp16", "onnx_int8_qdq", "onnx_int8_cpu", "calibration_ranges", "trt_calibration_cache")

Log = Callable[[str], None]


@dataclass
class ExportSettings:
    bundle: Path
    fp16: bool = False
    int8: bool = False
    calib: Path | None = None
    calib_size: int | None = 300
    calib_method: str = "percentile"
    calib_split: str | None = None  # only images of this split of the bundle's split.csv calibrate
    sensitivity: bool = False  # per-tensor SQNR table of the TensorRT Q/DQ form on --data/--split images
    sensitivity_plot: Path | None = None
    sensitivity_images: int = 8
    keep_float: tuple[str, ...] | str = ()  # node names kept out of the TensorRT Q/DQ form, or "auto"
    keep_float_max_dp: float | None = None  # auto also needs max |dp| <= this on the validation images
    seed: int = 0
    engine: bool = False
    int8_source: str = "qdq"
    max_batch: int = 16
    opt_batch: int = 1
    workspace_mib: int | None = None
    data: Path | None = None  # parity folder
    split: str | None = None
    reference: str | None = None  # keras or onnx-fp32; default: keras where TensorFlow is installed
    progress: bool = True


@dataclass
class ExportReport:
    bundle: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    parity: dict[str, Any] | None = None
    trt_check: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        """The gate: check-trt found no error, and every exported form reproduces the reference
        on at least one backend. A pair that FAILED (say OpenVINO's INT8 kernels on one CPU) is
        shown, and `auto` never runs it, but the file itself is good."""
        trt_ok = self.trt_check is None or bool(self.trt_check["passed"])
        return trt_ok and (self.parity is None or bool(self.parity.get("forms_passed", self.parity["passed"])))

    def add_triton(self, written: list[dict[str, Any]]) -> None:
        """Record the models `--triton` wrote into a Triton repository (export/triton.py)."""
        self.done += [f"triton: {entry['path']} ({entry['platform']}, {entry['form']}, "
                      f"max batch {entry['max_batch_size']})" for entry in written]

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "done": self.done, "skipped": self.skipped, "parity": self.parity,
                "trt_check": self.trt_check, "passed": self.passed}

    def lines(self) -> list[str]:
        """The report as `kedge export` prints it: what was done, what was skipped and why, then parity."""
        from kedge.runtime.parity import format_result

        lines = [f"done     {line}" for line in self.done] + [f"skipped  {line}" for line in self.skipped]
        return lines + ([format_result(self.parity)] if self.parity is not None else [])


def tensorflow_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tf_keras", "tf2onnx"))


# What each step imports beyond the lean runtime, and the extra that brings it.
STEP_NEEDS = {"--fp16": (("onnx", "onnxconverter_common", "onnxruntime"), "export"),
              "--int8": (("onnx", "onnxruntime"), "export")}


def require(step: str) -> None:
    """One line saying which extra a step needs, before any work, instead of an ImportError later."""
    modules, extra = STEP_NEEDS[step]
    missing = [m for m in modules if not _importable(m)]
    if missing:
        names = ", ".join(m.replace("_", "-") for m in missing)
        raise KedgeError(f"{step} needs {names}: pip install 'kedge[{extra}]'")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def export_bundle(s: ExportSettings, log: Log) -> ExportReport:
    bundle = load_bundle(s.bundle)
    report = ExportReport(str(bundle.path))
    calibrate = s.int8 and not (s.calib is None and s.engine and _has_int8_source(bundle, s.int8_source))
    if calibrate and s.calib is None:
        raise KedgeError("--int8 needs --calib DIR: a folder of calibration images (class folders, or flat); "
                         "with --engine, a bundle that already has its INT8 Q/DQ ONNX needs none")
    for step, on in (("--fp16", s.fp16), ("--int8", calibrate)):
        if on:
            require(step)
    images = _select_calibration(bundle, s, log) if calibrate else None
    if s.int8 and not calibrate:
        report.skipped.append("onnx-int8: no --calib; the engine is built from the bundle's INT8 Q/DQ ONNX")
    _export_fp32(bundle, s, report, log, images)
    if s.fp16:
        _export_fp16(bundle, report, log, images)
    if calibrate and images is not None:
        _export_int8(bundle, s, report, log, images)
    _check_trt(bundle, report, log)
    if s.engine:
        _build_engines(bundle, s, report, log)
    data = s.data
    if data is None and images is not None and images.stratified_by is not None:
        data = s.calib
        log(f"parity: on the calibration folder {data} (pass --data DIR for held-out images)")
    if data is None and s.split is not None:
        raise KedgeError(f"--split {s.split} needs --data DIR: {s.calib} has no class folders to check parity on")
    if data is None:
        report.skipped.append("parity: no labelled folder (pass --data DIR)")
    else:
        from kedge.export.parity import parity_for_bundle

        report.parity = parity_for_bundle(bundle.path, data, s.split, s.reference, progress=s.progress, log=log)
    if s.fp16 or calibrate or not s.engine:  # ONNX files were (re)made: record what they give here
        from kedge.export.golden import make_golden

        golden = make_golden(bundle.path, reference=s.reference, log=log)
        report.done.append(f"golden set: {len(golden['indices'])} synthetic knees, outputs of "
                           f"{', '.join(golden['outputs'])} (every machine checks its forms against them)")
    return report


def _has_int8_source(bundle: Bundle, int8_source: str) -> bool:
    """Whether an INT8 engine can be built from what the bundle already holds."""
    artifacts = bundle.manifest.get("artifacts", {})
    if int8_source == "calibration-cache":
        return "trt_calibration_cache" in artifacts and "onnx_fp32" in artifacts
    return "onnx_int8_qdq" in artifacts


def _select_calibration(bundle: Bundle, s: ExportSettings, log: Log) -> Any:
    from kedge.calibration.images import select_images
    from kedge.runtime.folders import read_split_manifest

    assert s.calib is not None
    only = None
    if s.calib_split is not None:
        assigned = read_split_manifest(bundle.file("split_manifest"))
        only = {path for path, split in assigned.items() if split == s.calib_split}
    images = select_images(s.calib, bundle.classes, s.calib_size, s.seed, only)
    how = f"stratified by {', '.join(images.stratified_by)}" if images.stratified_by else "no class folders"
    where = f"the {s.calib_split} split of {s.calib}" if s.calib_split else str(s.calib)
    log(f"calibration: {len(images.paths)} images from {where} ({how}, seed {s.seed})")
    for path, problem in images.skipped:
        log(f"  skipped {path}: {problem}")
    return images


def _gate_images(images: Any) -> Any:
    from kedge.export.onnx import gate_images

    return gate_images(images.paths[:: max(1, len(images.paths) // 8)] if images is not None else [])


def _save(bundle: Bundle, artifacts: dict[str, str | None], exports: dict[str, Any] | None = None,
          **sections: Any) -> None:
    """Update artifacts (None removes one, and its file), export records and sections; rewrite kedge.json."""
    manifest = dict(bundle.manifest)
    current = dict(manifest.get("artifacts", {}))
    for key, relative in artifacts.items():
        if relative is None:
            old = current.pop(key, None)
            if old and old not in current.values():
                (bundle.path / old).unlink(missing_ok=True)
        else:
            current[key] = relative
    manifest["artifacts"] = current
    if exports:
        manifest["exports"] = {**manifest.get("exports", {}), **exports}
    manifest.update(sections)
    manifest.pop("files", None)
    bundle.manifest = write_manifest(bundle.path, manifest)


def _export_fp32(bundle: Bundle, s: ExportSettings, report: ExportReport, log: Log, images: Any) -> None:
    exports = bundle.manifest.get("exports", {})
    artifacts = bundle.manifest.get("artifacts", {})
    if not tensorflow_available() or "keras" not in artifacts:
        why = "TensorFlow not installed here" if not tensorflow_available() else "the bundle has no Keras model"
        if "onnx_fp32" in artifacts:
            bundle.file("onnx_fp32")
            report.skipped.append(f"keras->onnx: {why}; using the bundle's FP32 ONNX")
        elif s.fp16 or images is not None:
            raise KedgeError(f"{bundle.path}: no FP32 ONNX, and converting from Keras needs TensorFlow and the "
                             "Keras model (install kedge[train] on the desktop, export there, then copy the bundle)")
        else:
            report.skipped.append(f"keras->onnx: {why}; no FP32 ONNX needed for this export")
        return
    keras_path = bundle.file("keras")
    keras_sha = sha256_file(keras_path)
    if "onnx_fp32" in artifacts and exports.get("onnx_fp32", {}).get("keras_sha256") == keras_sha:
        bundle.file("onnx_fp32")
        report.done.append("onnx-fp32: up to date with model.keras (reused)")
        log("onnx-fp32: up to date with model.keras, reused")
        return
    from kedge.export.onnx import DEFAULT_OPSET, KERAS_PARITY_TOLERANCE, check_parity, keras_to_onnx
    from kedge.runtime.backends.onnxruntime import OnnxRuntimeSession
    from kedge.train.backend import KerasSession

    log(f"onnx-fp32: converting {keras_path.name} with tf2onnx (the full resnet50-gru takes minutes and ~8-10 GB "
        "of RAM; run one conversion at a time)")
    keras = KerasSession(keras_path)
    target = bundle.path / ONNX_NAME
    staged = bundle.path / f".{ONNX_NAME}.gate"
    try:
        keras_to_onnx(keras.model, staged, DEFAULT_OPSET,
                      {"kedge_model": bundle.name, "kedge_classes": ",".join(bundle.classes)})
        with OnnxRuntimeSession(staged) as onnx_backend:
            worst = check_parity(keras, onnx_backend, _gate_images(images), KERAS_PARITY_TOLERANCE,
                                 f"{bundle.path}: ONNX vs Keras")
        staged.replace(target)  # same folder: atomic
    finally:
        staged.unlink(missing_ok=True)
        keras.close()
    onnx_sha = sha256_file(target)
    stale = {key: None for key in DERIVED
             if key in artifacts and exports.get(key, {}).get("source_onnx_sha256") != onnx_sha}
    if stale:
        log(f"onnx-fp32 changed: removed stale {', '.join(stale)}")
    _save(bundle, {"onnx_fp32": ONNX_NAME, **stale}, {"onnx_fp32": {
        "keras_sha256": keras_sha, "opset": DEFAULT_OPSET, "gate_max_abs_diff": worst,
        "tool": f"tf2onnx {_version('tf2onnx')}", "at": _now()}})
    report.done.append(f"onnx-fp32: {ONNX_NAME} (max |dp| vs Keras {worst:.1e} on the gate images)")
    log(f"onnx-fp32: wrote {ONNX_NAME}; max |dp| vs Keras {worst:.1e}")


def _export_fp16(bundle: Bundle, report: ExportReport, log: Log, images: Any) -> None:
    from kedge.export.fp16 import to_fp16
    from kedge.export.onnx import check_parity
    from kedge.runtime.backends.onnxruntime import OnnxRuntimeSession

    source = bundle.file("onnx_fp32")
    gate = _gate_images(images)
    staged = bundle.path / f".{FP16_NAME}.gate"
    try:
        details = to_fp16(source, staged, gate)
        with OnnxRuntimeSession(source) as fp32, OnnxRuntimeSession(staged) as fp16:
            worst = check_parity(fp32, fp16, gate, FP16_GATE, f"{bundle.path}: FP16 vs FP32 ONNX")
        staged.replace(bundle.path / FP16_NAME)
    finally:
        staged.unlink(missing_ok=True)
    _save(bundle, {"onnx_fp16": FP16_NAME}, {"onnx_fp16": {
        **details, "source_onnx_sha256": sha256_file(source), "gate_max_abs_diff": worst, "at": _now()}})
    kept = f", {len(details['kept_fp32_nodes'])} nodes kept in FP32" if details["kept_fp32_nodes"] else ""
    report.done.append(f"onnx-fp16: {FP16_NAME} (max |dp| vs FP32 {worst:.1e}{kept})")
    log(f"onnx-fp16: wrote {FP16_NAME}; max |dp| vs FP32 {worst:.1e}{kept}")


def _export_int8(bundle: Bundle, s: ExportSettings, report: ExportReport, log: Log, images: Any) -> None:
    from kedge.calibration.qdq import quantize
    from kedge.calibration.ranges import calibrate
    from kedge.calibration.trt_cache import DEFAULT_TRT_VERSION, write_trt_cache

    source = bundle.file("onnx_fp32")
    cache_dir = bundle.path / CALIBRATION_DIR
    validation = _validation(bundle, s, log) if _needs_validation(s) else None
    method, method_scores = s.calib_method, None
    if method == "auto":
        from kedge.calibration.ranges import METHODS
        from kedge.calibration.sensitivity import choose_method

        def candidate(m: str, out: Path) -> None:
            ranges_m = calibrate(source, images, m, cache_dir, s.progress)[0]
            quantize(source, ranges_m, m, "tensorrt", out)

        assert validation is not None
        method, method_scores = choose_method(METHODS, candidate, validation, log)
        log(f"calibration: chose {method} on the validation images")
    ranges, key, reused = calibrate(source, images, method, cache_dir, s.progress)
    log(f"calibration: {method} ranges {'reused from' if reused else 'computed and cached in'} "
        f"{ranges.relative_to(bundle.path)}")
    for old in cache_dir.glob("ranges.*.json"):  # other keys are stale for this bundle now
        if old != ranges:
            old.unlink()
    trt_cache = cache_dir / f"trt10.{method}.cache"
    write_trt_cache(ranges, method, trt_cache, DEFAULT_TRT_VERSION)
    for stale_cache in cache_dir.glob("trt10.*.cache"):
        if stale_cache != trt_cache:
            stale_cache.unlink()
    keep = _keep_float(bundle, s, source, ranges, method, validation, log)
    described = {"tensorrt": quantize(source, ranges, method, "tensorrt", bundle.path / INT8_QDQ_NAME,
                                      keep["nodes"]),
                 "cpu": quantize(source, ranges, method, "cpu", bundle.path / INT8_CPU_NAME)}
    source_sha = sha256_file(source)
    calibration = {
        "method": method, "key": key.digest, "reused": reused, "model_sha256": key.model_sha256,
        "images_sha256": key.images_sha256, "settings": dict(key.settings), "images": len(images.paths),
        "folder": portable_path(images.root, s.data), "split": s.calib_split, "stratified_by": images.stratified_by,
        "seed": s.seed,
        "trt_cache_header_version": DEFAULT_TRT_VERSION,
    }
    if method_scores is not None:
        calibration["method_choice"] = {"chosen_on": _validation_name(s), "scores": method_scores}
    if keep["nodes"] or keep.get("sensitivity"):
        calibration["tensorrt_keep_float"] = keep
    record = {"source_onnx_sha256": source_sha, "calibration_key": key.digest, "at": _now()}
    _save(bundle, {"onnx_int8_qdq": INT8_QDQ_NAME, "onnx_int8_cpu": INT8_CPU_NAME,
                   "calibration_ranges": ranges.relative_to(bundle.path).as_posix(),
                   "trt_calibration_cache": trt_cache.relative_to(bundle.path).as_posix()},
          {"onnx_int8_qdq": {**record, **described["tensorrt"]}, "onnx_int8_cpu": {**record, **described["cpu"]},
           "calibration_ranges": record, "trt_calibration_cache": record},
          calibration=calibration)
    kept = f", {len(keep['nodes'])} nodes kept in float" if keep["nodes"] else ""
    report.done.append(f"onnx-int8: {INT8_QDQ_NAME} (TensorRT{kept}) and {INT8_CPU_NAME} (CPU), {method} "
                       f"calibration on {len(images.paths)} images ({'cached' if reused else 'new'}), "
                       f"TensorRT 10 cache {trt_cache.name}")
    log(f"onnx-int8: wrote {INT8_QDQ_NAME}, {INT8_CPU_NAME} and {trt_cache.relative_to(bundle.path)}")


def _needs_validation(s: ExportSettings) -> bool:
    return s.calib_method == "auto" or s.keep_float == "auto" or s.sensitivity


def _validation_name(s: ExportSettings) -> str:
    """--data as kedge.json records it: a name, never the path of this machine."""
    name = portable_path(s.data) if s.data is not None else "no --data"
    return name + (f" ({s.split} split)" if s.split else "")


def _validation(bundle: Bundle, s: ExportSettings, log: Log) -> Any:
    """The labelled images the INT8 tools score on (--data, --split) with the reference's predictions."""
    from kedge.calibration.sensitivity import validation_set
    from kedge.runtime.folders import in_split, read_split_manifest, scan_labelled
    from kedge.runtime.parity import reference_pair

    if s.data is None:
        raise KedgeError("--sensitivity, --keep-float auto and --calib-method auto score on labelled validation "
                         "images: pass --data DIR --split val")
    items = scan_labelled(s.data, bundle.classes)
    if s.split is not None:
        items = in_split(items, s.data, read_split_manifest(bundle.file("split_manifest")), s.split)
    reference = reference_pair(bundle, s.reference)
    log(f"int8 tools: {len(items)} validation images of {_validation_name(s)}, reference {reference.form.name}")
    return validation_set(items, bundle.classes, lambda: reference.open(bundle))


def _keep_float(bundle: Bundle, s: ExportSettings, source: Path, ranges: Path, method: str, validation: Any,
                log: Log) -> dict[str, Any]:
    """The nodes kept out of the TensorRT Q/DQ form: --keep-float's list, or found greedily
    (auto); with --sensitivity, the SQNR table of the form first."""
    from kedge.calibration.qdq import quantize

    manual = [] if s.keep_float == "auto" else list(s.keep_float)
    keep: dict[str, Any] = {"mode": "manual", "nodes": manual}
    if not (s.sensitivity or s.keep_float == "auto"):
        return keep
    import tempfile

    from kedge.calibration import sensitivity as sens
    from kedge.export.trtcheck import float_consumer_nodes

    with tempfile.TemporaryDirectory(prefix="kedge-sqnr-") as scratch:
        baseline = Path(scratch) / "qdq.onnx"
        quantize(source, ranges, method, "tensorrt", baseline, manual)
        rows = sens.sensitivity_table(source, baseline, validation.tensors(s.sensitivity_images))
        # Q/DQ pairs feeding ops TensorRT runs in float only add noise: auto starts with those nodes in float
        seed = [n for n in float_consumer_nodes(baseline) if n not in manual]
    log(f"sensitivity: per-tensor SQNR of the TensorRT Q/DQ form on {s.sensitivity_images} validation images "
        "(worst first)\n" + sens.format_table(rows))
    if s.sensitivity_plot is not None:
        sens.plot_table(rows, s.sensitivity_plot)
        log(f"sensitivity: plot written to {s.sensitivity_plot}")
    if s.keep_float == "auto":
        if seed:
            log(f"keep-float: starting with {len(seed)} nodes around Q/DQ pairs TensorRT would run in float "
                f"(check-trt qdq-float-consumer): {', '.join(seed)}")
        keep = sens.greedy_keep_float(rows, lambda nodes, out: quantize(source, ranges, method, "tensorrt", out,
                                                                         nodes), validation, log,
                                      start=manual + seed, max_abs_diff=s.keep_float_max_dp)
        keep["started_with"] = seed
    keep["sensitivity"] = {"images": s.sensitivity_images, "on": _validation_name(s),
                           "worst": [r.to_json() for r in rows[:20]]}
    return keep


def _check_trt(bundle: Bundle, report: ExportReport, log: Log) -> None:
    """`kedge check-trt` on the TensorRT-bound files just made: an error fails the export."""
    from kedge.export.trtcheck import check_bundle

    if not _importable("onnx"):  # a lean device install building engines from shipped files
        report.skipped.append("check-trt: the onnx package is not installed (pip install 'kedge[cpu]')")
        return
    result = check_bundle(bundle.path)
    report.trt_check = result.to_json()
    for line in result.lines():
        log(f"check-trt: {line}")
    verdict = "passed" if result.passed else f"FAILED with {len(result.errors)} errors"
    report.done.append(f"check-trt: {verdict} ({len(result.findings) - len(result.errors)} warnings)")


def _build_engines(bundle: Bundle, s: ExportSettings, report: ExportReport, log: Log) -> None:
    from kedge.export.engine import build_engine, build_plan, tensorrt_version
    from kedge.runtime.cuda import has_gpu
    from kedge.runtime.engines import ENGINE_DIR

    version = tensorrt_version()
    if version is None or not has_gpu():
        why = "TensorRT is not installed" if version is None else "no CUDA GPU (or no pycuda) is visible"
        report.skipped.append(f"engines: {why}; build them on the device that will run them")
        log(f"engines: skipped ({why})")
        return
    precisions = [p for p, on in (("fp16", s.fp16), ("int8", s.int8)) if on] or ["fp32"]
    engines = dict(bundle.manifest.get("engines", {}))
    for precision in precisions:
        key, path = build_plan(precision, int(version.split(".")[0]), s.int8_source)
        onnx_path = bundle.file(key)
        cache = bundle.file("trt_calibration_cache") if path == "calibration-cache" else None
        log(f"engine {precision}: building from {onnx_path.name} ({path}, TensorRT {version})")
        engine_path, info = build_engine(onnx_path, bundle.path, bundle.name, precision, path, s.max_batch,
                                         s.opt_batch, s.workspace_mib, cache, s.progress)
        engines[engine_path.name] = f"{ENGINE_DIR}/{engine_path.name}"
        _save(bundle, {}, engines=engines)
        report.done.append(f"engine {precision}: {engine_path.name} ({info.build_seconds:.0f} s)")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
