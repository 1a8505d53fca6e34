"""`kedge check-trt`, `kedge golden` and `kedge verify`: what a device owner runs.

Registered on the main `kedge` group with one line in kedge/cli.py; the work is in
kedge.device (device/ in the repository).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.command(name="check-trt")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--trt", "versions", type=click.Choice(["10.3", "11", "all"]), default="all", show_default=True,
              help="TensorRT version to check for: 10.3 (JetPack 6) or 11.")
@click.option("--max-batch", type=click.IntRange(1, 4096), help="The engine profile's max batch (default 16, "
              "as `kedge export --engine`).")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def check_trt(bundle: Path, versions: str, max_batch: int | None, as_json: bool) -> None:
    """Check every TensorRT-bound ONNX file of BUNDLE without a GPU.

    \b
    Files: model.onnx (FP32), model.fp16.onnx (TensorRT 11) and
    model.int8.qdq.onnx, whichever the bundle has. Rules: operator and
    attribute support (onnx-tensorrt's published table, kept in
    device/trt_operators.json), explicit quantization (zero-points 0, int8,
    per-channel weights, Q/DQ placement), TensorRT 11 strong typing, and the
    dynamic batch axis against the engine profile.
    \b
    One line per finding: FILE: error|warning [RULE] TensorRT V: node 'N': why.
    Exit status 1 when there is an error (warnings do not fail).
    \b
    Example:
      kedge check-trt runtime/models/resnet50-gru --trt 10.3
    """
    from kedge.device.trtcheck import TRT_VERSIONS, check_bundle

    result = check_bundle(bundle, TRT_VERSIONS if versions == "all" else (versions,), max_batch)
    if as_json:
        _emit_json(result.to_json())
    else:
        click.echo("\n".join(result.lines()))
    if not result.passed:
        sys.exit(1)


def register(group: click.Group) -> None:
    for command in (check_trt,):
        group.add_command(command)
