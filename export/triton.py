"""A standard Triton model repository from a bundle, for clusters that run the full
Triton server (`kedge export BUNDLE --triton REPO_DIR`).

One model per form: the ONNX form for Triton's onnxruntime backend
(`<repo>/<model>/1/model.onnx`), and each TensorRT engine of the bundle for the
tensorrt backend (`<repo>/<model>-trt-<precision>/1/model.plan`). Each gets a
`config.pbtxt` with the input/output names and dims, the max batch size, dynamic
batching, and the classes as a parameter, so clients can label the outputs.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kedge.runtime.bundle.forms import FORMS, engine_forms
from kedge.runtime.bundle.forms import form as form_spec
from kedge.runtime.bundle.manifest import Bundle, atomic_path
from kedge.runtime.errors import KedgeError

INPUT, OUTPUT = "image", "probabilities"
PREFERRED = ("onnx-fp32", "onnx-int8")  # the ONNX form served when none is named: the reference, else INT8


def config_text(name: str, platform: str, classes: list[str], max_batch: int, queue_delay_us: int) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig)."""
    preferred = sorted({b for b in (1, 4, 8, 16, 32) if b <= max_batch})
    return "\n".join([
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        f'input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ 224, 224, 3 ] }} ]',
        f'output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ {len(classes)} ] }} ]',
        f"dynamic_batching {{ preferred_batch_size: [ {', '.join(map(str, preferred))} ] "
        f"max_queue_delay_microseconds: {queue_delay_us} }}",
        "instance_group [ { count: 1 kind: KIND_AUTO } ]",
        f'parameters {{ key: "classes" value: {{ string_value: "{",".join(classes)}" }} }}',
        "",
    ])


def write_repository(bundle: Bundle, repo: str | os.PathLike[str], form: str | None = None,
                     max_batch: int = 16, queue_delay_us: int = 2000) -> list[dict[str, Any]]:
    """Add the bundle's models to a Triton repository (created if needed); returns what was written."""
    from kedge.runtime.bundle.engines import read_sidecar

    name = form or next((f for f in PREFERRED if bundle.has(str(FORMS[f].artifact))), None)
    if name is None or form_spec(name).artifact is None or not bundle.has(str(form_spec(name).artifact)):
        raise KedgeError(f"{bundle.path}: no {name or 'ONNX'} form for a Triton repository; run `kedge export`")
    entries = [(bundle.name, "onnxruntime_onnx", bundle.file(str(form_spec(name).artifact)), "model.onnx",
                max_batch, name)]
    for rel in bundle.engines.values():
        info = read_sidecar(bundle.path / rel)
        engine = next(f for f in engine_forms() if f.precision == info.precision)
        entries.append((f"{bundle.name}-trt-{info.precision}", "tensorrt_plan", bundle.path / rel, "model.plan",
                        min(max_batch, int(info.batch["max"])), engine.name))
    written = []
    for model, platform, source, filename, batch, form_name in entries:
        folder = Path(repo) / model
        (folder / "1").mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "1" / filename) as tmp:
            shutil.copyfile(source, tmp)
        with atomic_path(folder / "config.pbtxt") as tmp:
            tmp.write_text(config_text(model, platform, bundle.classes, batch, queue_delay_us), encoding="utf-8")
        written.append({"model": model, "platform": platform, "form": form_name, "path": str(folder),
                        "max_batch_size": batch})
    return written
