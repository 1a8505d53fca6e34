"""The export stage: the deployable forms of a bundle and their proof (parity against the
reference, the golden set for devices, the input envelope), and the copy that ships."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kedge.options import (
    BUNDLE,
    SPLITS,
    backend_option,
    batch_size_option,
    csv_list,
    data_option,
    emit_json,
    finish,
    forms_option,
    json_option,
    log,
    machine,
    max_batch_option,
    out_option,
    overwrite_option,
    positive_int,
    quiet_option,
    reference_option,
    report_option,
    seed_option,
    source_options,
    source_spec,
    split_option,
    triton_option,
)
from kedge.runtime.errors import KedgeError


def _node_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    return () if value is None else tuple(n.strip() for n in value.split(",") if n.strip())


def _keep_float(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | str:
    return "auto" if value is not None and value.strip().lower() == "auto" else _node_list(ctx, param, value)


def int8_tool_options(f: Any) -> Any:
    """`kedge export`'s INT8 sensitivity options (calibration/sensitivity.py does the work)."""
    options = [
        click.option("--sensitivity", is_flag=True, help="With --int8: print the per-tensor SQNR (FP32 vs the "
                     "TensorRT Q/DQ form, ONNX Runtime's qdq_loss_debug) on --data/--split images, worst first."),
        click.option("--sensitivity-plot", type=click.Path(path_type=Path), help="Also plot it to this PNG."),
        click.option("--sensitivity-images", default=8, show_default=True, type=click.IntRange(1, 256),
                     help="Validation images for the SQNR table (memory grows with each)."),
        click.option("--keep-float", callback=_keep_float, metavar="NODE,...|auto",
                     help="Keep these nodes out of the TensorRT Q/DQ form: node names, or patterns matched "
                     "against node and output names (quote them: '*/conv1_*,*/conv2_*'); auto: keep the nodes "
                     "around the noisiest tensors in float, worst first, until parity passes on --data/--split."),
        click.option("--keep-float-cpu", callback=_node_list, metavar="NODE,...",
                     help="Keep these nodes (names or patterns, as --keep-float) out of the uint8 CPU form: "
                     "a model that amplifies early noise passes parity with its first stages in float."),
        click.option("--keep-float-max-dp", type=click.FloatRange(0, 1), help="With --keep-float auto: also "
                     "keep going until no validation probability moves more than this (e.g. 0.03; a small "
                     "validation split passes parity with a borderline image one step from a flip)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command(name="export")
@click.argument("bundle", type=BUNDLE)
@click.option("--fp16", is_flag=True, help="Also write the FP16 ONNX (FP32 I/O) and, with --engine, an FP16 engine.")
@click.option("--int8", is_flag=True, help="Also write INT8 Q/DQ ONNX forms from --calib images (and an INT8 engine "
              "with --engine; a bundle that already holds its Q/DQ ONNX needs no --calib for that).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Calibration images: class folders (sampled per class) or any folder of images.")
@click.option("--calib-size", default="300", show_default=True,
              help="How many calibration images to use, or 'all'.")
@click.option("--calib-method", type=click.Choice(["percentile", "entropy", "minmax", "auto"]), default="percentile",
              show_default=True, help="How activation ranges are chosen from the calibration images; auto: the "
              "method whose TensorRT Q/DQ form does best on --data/--split (e.g. val).")
@int8_tool_options
@click.option("--calib-split", type=click.Choice(SPLITS),
              help="Calibrate only on this split of --calib (the bundle's split.csv), e.g. train, so test "
              "images never calibrate.")
@seed_option("Seeds the calibration subset.")
@click.option("--engine", is_flag=True, help="Build TensorRT engines here (needs TensorRT and a GPU).")
@click.option("--int8-source", type=click.Choice(["qdq", "calibration-cache"]), default="qdq", show_default=True,
              help="TensorRT 10 only: build INT8 from the Q/DQ ONNX, or implicitly from the calibration cache.")
@max_batch_option("Engine optimisation profile: largest batch.", default=16)
@click.option("--opt-batch", default=1, show_default=True, type=click.IntRange(1, 4096),
              help="Engine optimisation profile: batch to tune for.")
@click.option("--workspace", "workspace_mib", type=click.IntRange(16, 1 << 20),
              help="TensorRT workspace limit in MiB (e.g. 1024 on an 8 GB Jetson).")
@data_option("Labelled folder for the parity gate (default: --calib when it has class folders).")
@split_option("Parity on this split of --data only.")
@reference_option("Parity reference (default: keras where TensorFlow is installed).")
@triton_option("Also write a Triton model repository here (ONNX for the onnxruntime backend, engines for "
               "tensorrt, config.pbtxt with dynamic batching). Alone, it uses the forms the bundle has.")
@quiet_option("No progress bars.")
@json_option("Print what was done, skipped and the parity rows as JSON.")
def export_command(bundle: Path, calib_size: str, workspace_mib: int | None, triton_repo: Path | None, quiet: bool,
                   as_json: bool, **options: Any) -> None:
    """Export BUNDLE to every form this machine can make, then check parity.

    \b
    On the desktop (TensorFlow):  Keras -> FP32 ONNX, gated on max |dp| <= 1e-4,
                                  --fp16 -> FP16 ONNX, --int8 -> INT8 Q/DQ ONNX
                                  (TensorRT's symmetric form and a faster uint8
                                  form for CPUs) and a TensorRT 10 calibration cache.
    On the device (TensorRT):     --engine builds engines from those ONNX files.
    Anything this machine cannot do is skipped and said so; without TensorFlow,
    --fp16 and --int8 need the [export] extra (onnx, onnxconverter-common).

    \b
    Examples:
      kedge export runs/cnn --fp16 --int8 --calib ../shared/data/knee-3class
      kedge export runs/cnn --engine --int8 --workspace 1024     # on the Jetson
    Calibration is cached in the bundle; the same model and images reuse it.
    Exit status 1 if the parity gate fails: a form that no backend here reproduces.
    """
    from kedge.export.pipeline import ExportReport, ExportSettings, export_bundle
    from kedge.runtime.bundle.manifest import load_bundle

    size = None if calib_size.strip().lower() == "all" else positive_int(calib_size, "--calib-size")
    if options["split"] is not None and options["data"] is None and options["calib"] is None:  # never ignored
        raise KedgeError(f"--split {options['split']} needs --data DIR (the labelled images parity is checked on)")
    if options["calib_split"] is not None and options["calib"] is None:
        raise KedgeError(f"--calib-split {options['calib_split']} needs --calib DIR")
    only_triton = triton_repo is not None and not any(options[k] for k in ("fp16", "int8", "engine", "data"))
    loaded = load_bundle(bundle)
    if only_triton:
        report = ExportReport(str(bundle))
    else:
        report = export_bundle(ExportSettings(bundle=loaded, calib_size=size, workspace_mib=workspace_mib,
                                              progress=not quiet, **options), log=log)
    if triton_repo is not None:
        from kedge.export.triton import write_repository

        report.add_triton(write_repository(loaded, triton_repo, max_batch=options["max_batch"]))
    finish(report, as_json)


@click.command()
@click.argument("bundle", type=BUNDLE)
@data_option("Labelled class-per-folder tree.", required=True)
@split_option("Only this split of --data.")
@reference_option("Default: keras where TensorFlow and model.keras are here, else onnx-fp32.")
@forms_option("Comma-separated forms to check (default: all this machine can run), e.g. "
              "onnx-fp16,onnx-int8,trt-int8.")
@backend_option(help="Comma-separated backends to check (default: every one usable here).", listed=True)
@batch_size_option(16)
@quiet_option("No progress bars.")
@json_option("Print JSON: rows with backend, form, precision, accuracy, macro_f1, agreement, max_abs_diff, "
             "mean_abs_diff, passed.")
def parity(bundle: Path, data: Path, split: str | None, reference: str | None, forms: str | None,
           backends: str | None, batch_size: int, quiet: bool, as_json: bool) -> None:
    """Compare every (backend, form, precision) pair of BUNDLE with the reference on labelled images.

    \b
    Per pair: accuracy, macro-F1, top-1 agreement with the reference, max and mean
    |dp|. Thresholds (a row FAILS outside them):
      fp32         agreement 100 %, max |dp| <= 1e-4
      fp16, bf16   agreement >= 99.5 %
      int8         agreement >= 98 %, accuracy within 1 point of the reference
    Near ties are not counted: a flip where the reference's own top-1 margin is at
    most 2x the precision's tolerance (1e-4 fp32, 1e-3 fp16, 0.05 int8), by a form
    whose max |dp| is within that tolerance (docs/export-and-parity.md, "The near-tie rule").
    The rows are recorded in the bundle's kedge.json (also a shipped bundle's, with
    its model.keras put back beside it as the reference); `--backend auto` only
    picks pairs that PASSED. Exit status 1 on any FAILED row.

    \b
    Example:
      kedge parity runtime/models/knee-cnn --data ../shared/data/knee-3class --split test
    """
    from kedge.export.parity import parity_for_bundle
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.checks.parity import format_result, result_json

    result = parity_for_bundle(load_bundle(bundle), data, split, reference, csv_list(forms, "--forms"), batch_size,
                               progress=not quiet, log=None if as_json else log,
                               backends=csv_list(backends, "--backend"))
    if as_json:
        emit_json(result_json(result))
    else:
        click.echo(format_result(result))
    if not result["passed"]:
        sys.exit(1)


@click.command()
@click.argument("bundle", type=BUNDLE)
@click.option("--count", default=24, show_default=True, type=click.IntRange(1, 1000), help="Golden images.")
@seed_option("Seeds kedge's synthetic knee generator.")
@reference_option("Reference outputs from (default: keras where TensorFlow and model.keras are here).")
@json_option("Print the stored golden set as JSON.")
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
    from kedge.runtime.bundle.manifest import load_bundle

    stored = make_golden(load_bundle(bundle), count, seed, reference, log=log)
    if as_json:
        emit_json(stored)
    else:
        click.echo(f"golden: {count} synthetic images (seed {seed}), reference {stored['reference']}, outputs of "
                   f"{', '.join(stored['outputs'])}, written to {bundle / 'kedge.json'}")


@click.command()
@click.argument("bundle", type=BUNDLE)
@data_option("The labelled folder the model was trained on (paths in the bundle's split.csv are relative to it), "
             "e.g. ../shared/data.", required=True)
@source_options
@click.option("--validated", help="Comma-separated sources to describe, e.g. B,C (default: those whose "
              "per-source test balanced accuracy has a 95 % Wilson lower bound above chance, from kedge.json). "
              "Recorded in the envelope.")
@click.option("--components", default=20, show_default=True, type=click.IntRange(1, 200),
              help="Principal components kept.")
@click.option("--keep", default=0.95, show_default=True, type=float,
              help="Share of the validated sources' validation images the threshold keeps inside.")
@report_option("Also measure it: the validated sources' test images as is, inverted, rotated 90 degrees and "
               "corner-cropped; non-radiographs; unvalidated sources; synthetic knees. Exit status 2 if a target "
               "is not met.")
@click.option("--synthetic", default=30, show_default=True, type=click.IntRange(0, 10_000),
              help="With --report: how many `kedge synth` knees to check (report only).")
@click.option("--dry-run", is_flag=True, help="Fit (and --report) without writing anything to the bundle.")
@quiet_option("No progress bars.")
@json_option("Print the envelope's summary (and the --report rows) as JSON.")
def envelope(bundle: Path, data: Path, validated: str | None, components: int, keep: float, report: bool,
             synthetic: int, dry_run: bool, quiet: bool, as_json: bool, **sources: Any) -> None:
    """Fit BUNDLE's input envelope: the images it was validated on, so that `kedge infer`
    withholds answers for images unlike them (a photograph, a plot, an inverted film).

    \b
    Fitted on the TRAIN split (the bundle's split.csv) of the validated sources, with
    a threshold that keeps --keep of their VALIDATION images inside; the TEST split is
    held out and its shares outside are reported. It describes image statistics
    (thumbnail, histogram, gradient and Laplacian energies), not the model's outputs,
    so every exported form gates alike. Written to BUNDLE/envelope.json and recorded
    with its sha256 in kedge.json; `kedge ship` carries it. See docs/envelope.md.

    \b
    Examples:
      kedge envelope runs/gru --data ../shared/data
      kedge envelope runtime/models/resnet50-gru --data ../shared/data --validated B,C --report
      kedge envelope runs/cnn --data ../shared/data --sources ../shared/data/manifest.csv \\
          --source-column collection --report --dry-run --json
    """
    from kedge.runtime.envelope.fit import fit_and_store
    from kedge.runtime.envelope.report import format_summary

    chosen = csv_list(validated, "--validated")
    fitted, samples, summary = fit_and_store(bundle, data, source_spec(sources), chosen, components, keep,
                                             write=not dry_run, progress=not quiet and not as_json,
                                             log=None if as_json else log)
    result: dict[str, Any] = {**summary}
    if report:
        from kedge.runtime.envelope.report import stress_report

        result["report"] = stress_report(fitted, samples, synthetic, progress=not quiet and not as_json)
        result["machine"] = machine()
    if as_json:
        emit_json(result)
    else:
        click.echo(format_summary(result))
    if report and not result["report"]["targets_met"]:
        sys.exit(2)


@click.command()
@click.argument("bundle", type=BUNDLE)
@out_option("Folder to create (e.g. runtime/models/knee-cnn).")
@forms_option("Comma-separated ONNX forms to carry.", default="onnx-fp32,onnx-int8")
@click.option("--data-source", help="Where the training images came from, for the model card (e.g. 'public "
              "Kaggle knee sets, de-identified').")
@overwrite_option("Replace --out (only once the new copy is complete).")
def ship(bundle: Path, out: Path, forms: str, data_source: str | None, overwrite: bool) -> None:
    """Copy an exported, parity-checked BUNDLE for shipping: the chosen forms, the small
    provenance files, and the model card (limitations, training data). Forms left out
    are listed with their sha256 and size.

    \b
    Example:
      kedge ship runs/gru --out runtime/models/resnet50-gru --forms onnx-fp32,onnx-int8
    """
    from kedge.export.ship import ship_bundle
    from kedge.runtime.bundle.manifest import load_bundle

    names = csv_list(forms, "--forms") or []
    shipped = ship_bundle(load_bundle(bundle), out, names, overwrite, data_source)
    log(f"shipped {shipped.name} to {out}: {', '.join(names)}, {shipped.section('shipped')['bytes'] / 1e6:.1f} MB")


COMMANDS = [export_command, parity, golden, envelope, ship]
