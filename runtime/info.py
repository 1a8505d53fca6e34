"""What this machine offers kedge: versions, each registered backend as it reports itself
(ONNX Runtime's providers, OpenVINO's CPU capabilities, TensorRT, ...), the GPU, the CPU
features that decide INT8 speed on the CPU, and a bundle's pairs and engines.

Every probe is optional and never raises: `kedge info` is what a user runs when
something is missing, so it must work when everything is missing.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from kedge.runtime.cpu import cpu_info


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def backends_info() -> dict[str, dict[str, Any] | None]:
    """Each registered backend's own report (`Backend.info`), by registry name. Parity
    references (Keras, in kedge.train) are not imported: the TensorFlow line reports them."""
    from kedge.runtime.backends import REFERENCES, backend_class, names

    found: dict[str, dict[str, Any] | None] = {}
    for name in (n for n in names() if n not in REFERENCES):
        try:
            found[name] = backend_class(name).info()
        except Exception as err:  # a plug-in that does not load must not stop the report that diagnoses it
            found[name] = {"version": None, "problem": f"its plug-in does not load ({type(err).__name__}: {err})"}
    return found


def pairs_info(bundle_path: str | Path) -> list[dict[str, Any]]:
    """Each (backend, form, precision) this machine can run from the bundle, with both of its
    checks: parity recorded at export, and the golden check on this machine (from the
    per-machine cache; it runs on first use or with `kedge verify`)."""
    from kedge.runtime.backends import runnable_pairs
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.checks.choice import checked_here
    from kedge.runtime.checks.parity import status

    bundle = load_bundle(bundle_path)
    pairs = runnable_pairs(bundle)
    here = checked_here(bundle, pairs)
    rows = []
    for pair in pairs:
        state, detail = status(bundle, pair)
        found = here.get(pair.key)
        on_machine = "not checked yet (first use, or `kedge verify`, runs it)" if found is None else \
            {True: "passed", False: "FAILED", None: "not checkable"}[found.passed]
        rows.append({"backend": pair.backend, "form": pair.form.name, "precision": pair.precision,
                     "parity": state, "detail": detail, "here": on_machine,
                     "here_detail": found.detail if found else ""})
    return rows


def gpu_info() -> dict[str, Any] | None:
    from dataclasses import asdict

    from kedge.runtime.cuda import device_summary, gpu_count

    summary = device_summary()
    return None if summary is None else {**asdict(summary), "count": gpu_count()}


def engines_info(bundle_path: str | Path) -> list[dict[str, Any]]:
    """Each engine in a bundle with whether this machine can run it, and why not."""
    from kedge.runtime.backends import backend_class
    from kedge.runtime.bundle.engines import check_compatible, read_sidecar
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.errors import KedgeError

    bundle = load_bundle(bundle_path)
    trt_version = (backend_class("tensorrt").info() or {}).get("version")
    gpu = gpu_info()
    rows = []
    for name, rel in sorted(bundle.engines.items()):
        path = bundle.path / rel
        row: dict[str, Any] = {"engine": name, "compatible": False}
        try:
            info = read_sidecar(path)
            row.update(precision=info.precision, tensorrt=info.tensorrt_version, gpu=info.gpu_name,
                       compute_capability=info.compute_capability)
            if not path.is_file():
                raise KedgeError(f"{path}: missing")
            if trt_version is None or gpu is None:
                raise KedgeError("no TensorRT or no GPU on this machine")
            check_compatible(path, info, trt_version, gpu["compute_capability"],
                             bundle.files.get(info.source_onnx))
            row["compatible"] = True
        except KedgeError as err:
            row["problem"] = str(err)
        rows.append(row)
    return rows


def shipped_info() -> list[dict[str, str]]:
    """Each shipped model's name and folder inside the installed package: what a command
    taking a bundle accepts as a name (`kedge verify knee-cnn`)."""
    from kedge.runtime.bundle.shipped import shipped_bundles

    return [{"name": path.name, "location": str(path)} for path in shipped_bundles()]


def collect(bundle: str | Path | None = None) -> dict[str, Any]:
    import cv2
    import numpy as np

    import kedge
    from kedge.runtime.inputs.preprocess import PREPROCESS_VERSION

    info: dict[str, Any] = {
        "kedge": kedge.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "numpy": np.__version__, "opencv": cv2.__version__, "preprocess_version": PREPROCESS_VERSION,
        **backends_info(), "pycuda": _version("pycuda"),
        "tensorflow": _version("tensorflow"), "gpu": gpu_info(), "cpu": cpu_info(),
        "shipped_models": shipped_info(),
    }
    if bundle is not None:
        info["bundle"] = str(bundle)
        info["pairs"] = pairs_info(bundle)
        info["engines"] = engines_info(bundle)
    return info


def format_info(data: dict[str, Any]) -> str:
    """`kedge info` as text: one line per registered backend, as the backend describes itself."""
    from kedge.runtime.backends import backend_class, names

    gpu, cpu = data["gpu"], data["cpu"]
    lines = [
        f"kedge          {data['kedge']} (preprocessing v{data['preprocess_version']}), Python {data['python']}",
        f"numpy          {data['numpy']}",
        f"OpenCV         {data['opencv']}",
    ]
    for name in (n for n in names() if n in data):
        try:
            cls = backend_class(name)
            lines.append(f"{cls.title or name:<14} {cls.describe(data[name])}")
        except Exception:  # as in backends_info: the plug-in does not load
            lines.append(f"{name:<14} not available ({data[name]['problem']})")
    lines += [
        f"pycuda         {data['pycuda'] or 'not installed'}",
        f"TensorFlow     {data['tensorflow'] or 'not installed (not needed to run models)'}",
        "GPU            " + (f"{gpu['name']}, compute capability {gpu['compute_capability']}, "
                            f"{gpu['total_memory_mib']} MiB" if gpu else "none visible"),
        f"CPU            {cpu['model']}, {cpu['cores']} cores, {cpu['machine']}",
        "CPU INT8/BF16  " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["int8_features"].items()),
        "shipped models " + ("; ".join(f"{m['name']} in {m['location']}" for m in data["shipped_models"])
                             or "none in this installation"),
    ]
    if "pairs" in data:
        lines.append(f"pairs in {data['bundle']} (backend, form, precision: parity at export; golden check here):")
        lines += [f"  {p['backend']:<12}{p['form']:<15}{p['precision']:<6}{p['parity']}: {p['detail']}; "
                  f"here: {p['here']}{' (' + p['here_detail'] + ')' if p['here_detail'] else ''}"
                  for p in data["pairs"]] or ["  none runnable here"]
        lines.append(f"engines in {data['bundle']}: " + ("none" if not data["engines"] else ""))
        lines += [f"  {e['engine']}: " + ("runs here" if e["compatible"] else f"not here ({e['problem']})")
                  for e in data["engines"]]
    return "\n".join(lines)
