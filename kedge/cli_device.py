"""`kedge check-trt`, `kedge golden` and `kedge verify`: what a device owner runs.

Registered on the main `kedge` group with one line in kedge/cli.py; the work is in
kedge.export (trtcheck.py, golden.py, verify.py).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kedge.options import BUNDLE
from kedge.options import emit_json as _emit_json


def _finish(result: Any, as_json: bool) -> None:
    """Print a check-trt or verify result (lines or JSON); exit 1 when it did not pass."""
    if as_json:
        _emit_json(result.to_json())
    else:
        click.echo("\n".join(result.lines()))
    if not result.passed:
        sys.exit(1)


@click.command(name="check-trt")
@click.argument("bundle", type=BUNDLE)
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
    export/trt_operators.json), explicit quantization (zero-points 0, int8,
    per-channel weights, Q/DQ placement), TensorRT 11 strong typing, and the
    dynamic batch axis against the engine profile.
    \b
    One line per finding: FILE: error|warning [RULE] TensorRT V: node 'N': why.
    Exit status 1 when there is an error (warnings do not fail).
    \b
    Example:
      kedge check-trt runtime/models/resnet50-gru --trt 10.3
    """
    from kedge.export.trtcheck import TRT_VERSIONS, check_bundle
    from kedge.runtime.bundle import load_bundle

    _finish(check_bundle(load_bundle(bundle), TRT_VERSIONS if versions == "all" else (versions,), max_batch),
            as_json)


@click.command()
@click.argument("bundle", type=BUNDLE)
@click.option("--count", default=24, show_default=True, type=click.IntRange(1, 1000), help="Golden images.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds kedge's synthetic knee generator.")
@click.option("--reference", type=click.Choice(["keras", "onnx-fp32"]),
              help="Reference outputs from (default: keras where TensorFlow and model.keras are here).")
@click.option("--json", "as_json", is_flag=True, help="Print the stored golden set as JSON.")
def golden(bundle: Path, count: int, seed: int, reference: str | None, as_json: bool) -> None:
    """Store a golden set in BUNDLE for `kedge verify` on devices.

    \b
    Synthetic knees drawn by kedge's own generator from --seed (never real
    images), the reference's probabilities on them and those of every ONNX
    form in the bundle. Only the seed, the generator's parameters, pixel
    hashes and probabilities go into kedge.json (a few KB), not the pixels.
    Run it where the bundle was exported (model.keras beside it).
    \b
    Example:
      kedge golden runtime/models/resnet50-gru
    """
    from kedge.export.golden import make_golden
    from kedge.runtime.bundle import load_bundle

    stored = make_golden(load_bundle(bundle), count, seed, reference, log=lambda m: click.echo(m, err=True))
    if as_json:
        _emit_json(stored)
    else:
        click.echo(f"golden: {count} synthetic images (seed {seed}), reference {stored['reference']}, outputs of "
                   f"{', '.join(stored['outputs'])}, written to {bundle / 'kedge.json'}")


@click.command()
@click.argument("bundle", type=BUNDLE)
@click.option("--data", type=click.Path(path_type=Path), help="Labelled class-per-folder tree: also rerun parity.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Parity on this split of --data only.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Also write the report as Markdown.")
@click.option("--no-build", is_flag=True, help="Do not build engines (check the ones already in the bundle).")
@click.option("--bench-iterations", default=20, show_default=True, type=click.IntRange(0, 10000),
              help="Timed calls per form and batch size (0: no benchmark).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(bundle: Path, data: Path | None, split: str | None, report_path: Path | None, no_build: bool,
           bench_iterations: int, as_json: bool) -> None:
    """Prove on this machine what can be proven about BUNDLE.

    \b
    1. check-trt on every TensorRT-bound ONNX file;
    2. the TensorRT engines this machine can build (TensorRT 10 or 11 and
       a GPU), or plainly why none was built;
    3. every (backend, form, precision) pair this machine runs, on the
       golden set stored in the bundle;
    4. parity of each pair on --data (against the FP32 ONNX, or in a
       shipped bundle against the accuracies its recorded parity gives);
    5. a short benchmark of each pair.
    Each check: passed, failed, or not checkable here (and why); a pair the
    bundle's recorded parity already FAILED (auto never runs it) is shown
    as "failed as recorded". Exit status 1 when a check failed, or when
    nothing could be checked here.
    \b
    Example, on a Jetson: copy the bundle, then
      kedge verify runtime/models/resnet50-gru --report verify.md
    """
    from kedge.export.verify import verify_bundle
    from kedge.runtime.bundle import atomic_write_text, load_bundle

    result = verify_bundle(load_bundle(bundle), data, split, build=not no_build, bench_iterations=bench_iterations,
                           log=lambda m: click.echo(m, err=True))
    if report_path is not None:
        atomic_write_text(report_path, result.markdown())
    _finish(result, as_json)


def _keep_float(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | str:
    if value is None:
        return ()
    if value.strip().lower() == "auto":
        return "auto"
    return tuple(n.strip() for n in value.split(",") if n.strip())


def int8_tool_options(f: Any) -> Any:
    """`kedge export`'s INT8 sensitivity options (calibration/sensitivity.py does the work)."""
    options = [
        click.option("--sensitivity", is_flag=True, help="With --int8: print the per-tensor SQNR (FP32 vs the "
                     "TensorRT Q/DQ form, ONNX Runtime's qdq_loss_debug) on --data/--split images, worst first."),
        click.option("--sensitivity-plot", type=click.Path(path_type=Path), help="Also plot it to this PNG."),
        click.option("--sensitivity-images", default=8, show_default=True, type=click.IntRange(1, 256),
                     help="Validation images for the SQNR table (memory grows with each)."),
        click.option("--keep-float", callback=_keep_float, metavar="NODE,...|auto",
                     help="Keep these nodes out of the TensorRT Q/DQ form; auto: keep the nodes around the "
                     "noisiest tensors in float, worst first, until parity passes on --data/--split."),
        click.option("--keep-float-max-dp", type=click.FloatRange(0, 1), help="With --keep-float auto: also "
                     "keep going until no validation probability moves more than this (e.g. 0.03; a small "
                     "validation split passes parity with a borderline image one step from a flip)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def register(group: click.Group) -> None:
    for command in (check_trt, golden, verify):
        group.add_command(command)
