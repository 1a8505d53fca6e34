"""`kedge export`: every form that applies on this machine, then the parity gate.

Steps, each skipped with a reason when this machine cannot do it:

1. Keras -> FP32 ONNX (needs TensorFlow), gated on max |dp| <= 1e-4 against Keras.
   Reused when the Keras file has not changed since the last export.
2. Every form converted from the FP32 ONNX whose option is on (--fp16: the FP16 ONNX),
   by the converter its row of the table of forms names, gated against the FP32 ONNX.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

from kedge.export import needs
from kedge.runtime.bundle.forms import FORMS, Form, onnx_forms
from kedge.runtime.bundle.manifest import Bundle, portable_path, sha256_file
from kedge.runtime.errors import KedgeError

ONNX_NAME = FORMS["onnx-fp32"].file  # file names come from the one table of forms
INT8_QDQ_NAME = FORMS["onnx-int8-qdq"].file
INT8_CPU_NAME = FORMS["onnx-int8"].file
CALIBRATION_DIR = "calibration"
CALIBRATION_KEYS = ("calibration_ranges", "trt_calibration_cache")  # made with the INT8 forms, not forms

Log = Callable[[str], None]


@dataclass
class ExportSettings:
    bundle: Bundle
    fp16: bool = False
    int8: bool = False
    calib: Path | None = None
    calib_size: int | None = 300
    calib_method: str = "percentile"
    calib_split: str | None = None  # only images of this split of the bundle's split.csv calibrate
    sensitivity: bool = False  # per-tensor SQNR table of the TensorRT Q/DQ form on --data/--split images
    sensitivity_plot: Path | None = None
    sensitivity_images: int = 8
    keep_float: tuple[str, ...] | str = ()  # nodes (names or patterns) kept out of the TensorRT Q/DQ form, or "auto"
    keep_float_cpu: tuple[str, ...] = ()  # nodes (names or patterns) kept out of the uint8 CPU form
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
        from kedge.runtime.checks.parity import format_result

        lines = [f"done     {line}" for line in self.done] + [f"skipped  {line}" for line in self.skipped]
        return lines + ([format_result(self.parity)] if self.parity is not None else [])


def derived_keys() -> tuple[str, ...]:
    """Artifacts made from the FP32 ONNX, stale once it changes: the forms whose row names
    it as their source, and the INT8 calibration files."""
    return (*(str(f.artifact) for f in onnx_forms() if "onnx-fp32" in f.built_from), *CALIBRATION_KEYS)


def converted_forms(s: ExportSettings) -> list[Form]:
    """The forms converted from another (their row names a converter) that this export makes:
    those whose `made_by` option is on, the ExportSettings field click names after it
    (--fp16: fp16); a row with no option is made by every export that has its source."""
    def on(option: str) -> bool:
        return not option or bool(getattr(s, option.lstrip("-").replace("-", "_"), False))

    return [f for f in onnx_forms() if f.converter is not None and on(f.made_by.split(" ")[0])]


def export_bundle(s: ExportSettings, log: Log) -> ExportReport:
    bundle = s.bundle
    report = ExportReport(str(bundle.path))
    calibrate = s.int8 and not (s.calib is None and s.engine and _has_int8_source(bundle, s.int8_source))
    if calibrate and s.calib is None:
        raise KedgeError("--int8 needs --calib DIR: a folder of calibration images (class folders, or flat); "
                         "with --engine, a bundle that already has its INT8 Q/DQ ONNX needs none")
    converted = converted_forms(s)
    steps = [f.made_by for f in converted if f.made_by in needs.STEP_NEEDS] + (["--int8"] if calibrate else [])
    for step in dict.fromkeys(steps):
        needs.require(step)
    shaping = [name for name, given in (("--keep-float", s.keep_float), ("--keep-float-cpu", s.keep_float_cpu),
                                        ("--sensitivity", s.sensitivity), ("--sensitivity-plot", s.sensitivity_plot),
                                        ("--keep-float-max-dp", s.keep_float_max_dp is not None)) if given]
    if shaping and not calibrate:
        raise KedgeError(f"{', '.join(shaping)} only shape{'s' if len(shaping) == 1 else ''} the INT8 forms made "
                         "from calibration: add --int8 --calib DIR")
    if s.sensitivity_plot is not None and not (s.sensitivity or s.keep_float == "auto"):
        raise KedgeError("--sensitivity-plot draws the SQNR table: add --sensitivity (or --keep-float auto)")
    if s.keep_float_max_dp is not None and s.keep_float != "auto":
        raise KedgeError("--keep-float-max-dp is a goal of --keep-float auto: add it, or drop the goal")
    images = _select_calibration(bundle, s, log) if calibrate else None
    if s.int8 and not calibrate:
        report.skipped.append("onnx-int8: no --calib; the engine is built from the bundle's INT8 Q/DQ ONNX")
    _export_fp32(bundle, s, report, log, images, asked=[f for f in converted if f.made_by])
    for spec in converted:
        _export_converted(bundle, spec, report, log, images)
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

        report.parity = parity_for_bundle(bundle, data, s.split, s.reference, progress=s.progress, log=log)
    if converted or calibrate or not s.engine:  # ONNX files were (re)made: record what they give here
        from kedge.export.golden import make_golden

        golden = make_golden(bundle, reference=s.reference, log=log)
        report.done.append(f"golden set: {len(golden['indices'])} synthetic knees, outputs of "
                           f"{', '.join(golden['outputs'])} (every machine checks its forms against them)")
    return report


def _has_int8_source(bundle: Bundle, int8_source: str) -> bool:
    """Whether an INT8 engine can be built from what the bundle already holds."""
    if int8_source == "calibration-cache":
        return bundle.has("trt_calibration_cache") and bundle.has(str(FORMS["onnx-fp32"].artifact))
    return bundle.has(str(FORMS["onnx-int8-qdq"].artifact))


def _select_calibration(bundle: Bundle, s: ExportSettings, log: Log) -> Any:
    from kedge.calibration.images import select_images

    assert s.calib is not None
    only = None
    if s.calib_split is not None:
        only = {path for path, split in bundle.split.items() if split == s.calib_split}
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
    """Update artifacts (None removes one, and its file), export records and sections (Bundle.update
    rewrites kedge.json, hashing the files the artifacts name)."""
    current = bundle.artifacts
    for key, relative in artifacts.items():
        if relative is None:
            old = current.pop(key, None)
            if old and old not in current.values():
                (bundle.path / old).unlink(missing_ok=True)
        else:
            current[key] = relative
    if exports:
        sections["exports"] = {**bundle.exports, **exports}
    bundle.update(artifacts=current, **sections)


def _export_fp32(bundle: Bundle, s: ExportSettings, report: ExportReport, log: Log, images: Any,
                 asked: list[Form]) -> None:
    """Keras -> FP32 ONNX; `asked`: the converted forms an option asked for (they need the FP32 ONNX)."""
    exports = bundle.exports
    artifacts = bundle.artifacts
    if not needs.tensorflow_available() or "keras" not in artifacts:
        why = "TensorFlow not installed here" if not needs.tensorflow_available() else "the bundle has no Keras model"
        if "onnx_fp32" in artifacts:
            bundle.file("onnx_fp32")
            report.skipped.append(f"keras->onnx: {why}; using the bundle's FP32 ONNX")
        elif asked or images is not None:
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
    stale = {key: None for key in derived_keys()
             if key in artifacts and exports.get(key, {}).get("source_onnx_sha256") != onnx_sha}
    if stale:
        log(f"onnx-fp32 changed: removed stale {', '.join(stale)}")
    _save(bundle, {"onnx_fp32": ONNX_NAME, **stale}, {"onnx_fp32": {
        "keras_sha256": keras_sha, "opset": DEFAULT_OPSET, "gate_max_abs_diff": worst,
        "tool": f"tf2onnx {_version('tf2onnx')}", "at": _now()}})
    report.done.append(f"onnx-fp32: {ONNX_NAME} (max |dp| vs Keras {worst:.1e} on the gate images)")
    log(f"onnx-fp32: wrote {ONNX_NAME}; max |dp| vs Keras {worst:.1e}")


def _export_converted(bundle: Bundle, spec: Form, report: ExportReport, log: Log, images: Any) -> None:
    """One form converted from another by the converter its row names, gated against its
    source (max |dp| <= the row's gate on the gate images), then recorded with the sha256
    of the source it came from."""
    from kedge.export.onnx import check_parity
    from kedge.runtime.backends.onnxruntime import OnnxRuntimeSession

    origin = FORMS[spec.built_from[0]]
    if not bundle.has(str(origin.artifact)) and not spec.made_by:
        report.skipped.append(f"{spec.name}: the bundle has no {origin.name} to make it from")
        return
    source = bundle.file(str(origin.artifact))
    convert = _converter(spec)
    gate = _gate_images(images)
    staged = bundle.path / f".{spec.file}.gate"
    try:
        details = dict(convert(source, staged, gate))
        worst = None
        if spec.gate is not None:
            with OnnxRuntimeSession(source) as before, OnnxRuntimeSession(staged) as after:
                worst = check_parity(before, after, gate, spec.gate,
                                     f"{bundle.path}: {spec.name} vs {origin.name}")
        staged.replace(bundle.path / spec.file)
    finally:
        staged.unlink(missing_ok=True)
    _save(bundle, {str(spec.artifact): spec.file}, {str(spec.artifact): {
        **details, "source_onnx_sha256": sha256_file(source), "gate_max_abs_diff": worst, "at": _now()}})
    kept = f", {len(details['kept_fp32_nodes'])} nodes kept in FP32" if details.get("kept_fp32_nodes") else ""
    gated = f"max |dp| vs {origin.precision.upper()} {worst:.1e}" if worst is not None else "no gate"
    report.done.append(f"{spec.name}: {spec.file} ({gated}{kept})")
    log(f"{spec.name}: wrote {spec.file}; {gated}{kept}")


def _converter(spec: Form) -> Callable[..., dict[str, Any]]:
    """The function a row of the table names as its converter ("module:function", imported now)."""
    if callable(spec.converter):
        return spec.converter
    module, _, name = str(spec.converter).partition(":")
    function: Callable[..., dict[str, Any]] = getattr(import_module(module), name)
    return function


def _export_int8(bundle: Bundle, s: ExportSettings, report: ExportReport, log: Log, images: Any) -> None:
    from kedge.calibration.qdq import expand_nodes, quantize
    from kedge.calibration.ranges import calibrate
    from kedge.calibration.trt_cache import DEFAULT_TRT_VERSION, write_trt_cache

    source = bundle.file("onnx_fp32")
    # the nodes each form keeps in float, resolved before any calibration: a mistyped pattern fails at once
    trt_nodes = [] if s.keep_float == "auto" else expand_nodes(source, s.keep_float, "--keep-float")
    cpu_nodes = expand_nodes(source, s.keep_float_cpu, "--keep-float-cpu")
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
    keep = _keep_float(bundle, s, source, ranges, method, validation, trt_nodes, log)
    described = {"tensorrt": quantize(source, ranges, method, "tensorrt", bundle.path / INT8_QDQ_NAME,
                                      keep["nodes"]),
                 "cpu": quantize(source, ranges, method, "cpu", bundle.path / INT8_CPU_NAME, cpu_nodes)}
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
    if s.keep_float_cpu:
        calibration["cpu_keep_float"] = {"mode": "manual", "patterns": list(s.keep_float_cpu), "nodes": cpu_nodes}
    record = {"source_onnx_sha256": source_sha, "calibration_key": key.digest, "at": _now()}
    _save(bundle, {"onnx_int8_qdq": INT8_QDQ_NAME, "onnx_int8_cpu": INT8_CPU_NAME,
                   "calibration_ranges": ranges.relative_to(bundle.path).as_posix(),
                   "trt_calibration_cache": trt_cache.relative_to(bundle.path).as_posix()},
          {"onnx_int8_qdq": {**record, **described["tensorrt"]}, "onnx_int8_cpu": {**record, **described["cpu"]},
           "calibration_ranges": record, "trt_calibration_cache": record},
          calibration=calibration)
    kept = f", {len(keep['nodes'])} nodes kept in float" if keep["nodes"] else ""
    kept_cpu = f", {len(cpu_nodes)} nodes kept in float" if cpu_nodes else ""
    report.done.append(f"onnx-int8: {INT8_QDQ_NAME} (TensorRT{kept}) and {INT8_CPU_NAME} (CPU{kept_cpu}), {method} "
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
    from kedge.runtime.checks.parity import reference_pair

    if s.data is None:
        raise KedgeError("--sensitivity, --keep-float auto and --calib-method auto score on labelled validation "
                         "images: pass --data DIR --split val")
    items = bundle.labelled(s.data, s.split)
    reference = reference_pair(bundle, s.reference)
    log(f"int8 tools: {len(items)} validation images of {_validation_name(s)}, reference {reference.form.name}")
    return validation_set(items, bundle.classes, lambda: reference.open(bundle))


def _keep_float(bundle: Bundle, s: ExportSettings, source: Path, ranges: Path, method: str, validation: Any,
                manual: list[str], log: Log) -> dict[str, Any]:
    """The nodes kept out of the TensorRT Q/DQ form: --keep-float's (`manual`, resolved), or
    found greedily (auto); with --sensitivity, the SQNR table of the form first."""
    from kedge.calibration.qdq import quantize

    keep: dict[str, Any] = {"mode": "manual", "nodes": manual}
    if s.keep_float != "auto" and list(s.keep_float) != manual:
        keep["patterns"] = list(s.keep_float)
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

    if not needs.importable("onnx"):  # a lean device install building engines from shipped files
        report.skipped.append("check-trt: the onnx package is not installed (pip install 'kedge[cpu]')")
        return
    result = check_bundle(bundle)
    report.trt_check = result.to_json()
    for line in result.lines():
        log(f"check-trt: {line}")
    verdict = "passed" if result.passed else f"FAILED with {len(result.errors)} errors"
    report.done.append(f"check-trt: {verdict} ({len(result.findings) - len(result.errors)} warnings)")


def _build_engines(bundle: Bundle, s: ExportSettings, report: ExportReport, log: Log) -> None:
    from kedge.export.engine import build_engine, build_plan, tensorrt_version
    from kedge.runtime.bundle.engines import ENGINE_DIR
    from kedge.runtime.cuda import has_gpu

    version = tensorrt_version()
    if version is None or not has_gpu():
        why = "TensorRT is not installed" if version is None else "no CUDA GPU (or no pycuda) is visible"
        report.skipped.append(f"engines: {why}; build them on the device that will run them")
        log(f"engines: skipped ({why})")
        return
    precisions = [p for p, on in (("fp16", s.fp16), ("int8", s.int8)) if on] or ["fp32"]
    engines = bundle.engines
    for precision in precisions:
        key, path = build_plan(precision, int(version.split(".")[0]), s.int8_source)
        onnx_path = bundle.file(key)
        cache = bundle.file("trt_calibration_cache") if path == "calibration-cache" else None
        log(f"engine {precision}: building from {onnx_path.name} ({path}, TensorRT {version})")
        engine_path, info = build_engine(onnx_path, bundle.path, bundle.name, precision, path, s.max_batch,
                                         s.opt_batch, s.workspace_mib, cache, s.progress)
        engines[engine_path.name] = f"{ENGINE_DIR}/{engine_path.name}"
        bundle.update(engines=engines)
        report.done.append(f"engine {precision}: {engine_path.name} ({info.build_seconds:.0f} s)")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
