"""The check stage: what this machine offers, what a bundle says of itself (its card),
and what can be proven about it here: its TensorRT-bound files, its pairs on this
machine (verify), and whether it answers from the image's source (audit)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kedge.options import (
    BUNDLE,
    allow_unverified_option,
    backend_option,
    batch_size_option,
    data_option,
    emit_json,
    finish,
    json_option,
    load_models,
    log,
    max_batch_option,
    model_option,
    open_runner,
    plot_option,
    precision_option,
    quiet_option,
    report_option,
    source_options,
    source_spec,
    split_option,
)


@click.command()
@model_option("Also list this bundle's (backend, form, precision) pairs with their parity status, and its engines.",
              envvar=False)
@json_option()
def info(model: Path | None, as_json: bool) -> None:
    """What this machine offers kedge: versions, backends (ONNX Runtime, OpenVINO,
    TensorRT), GPU, CPU INT8/BF16 features, and a bundle's pairs and engines.

    \b
    Example:
      kedge info --model runs/cnn
    """
    from kedge.runtime.info import collect, format_info

    data = collect(model)
    if as_json:
        emit_json(data)
        return
    click.echo(format_info(data))


@click.command()
@click.argument("bundles", nargs=-1, type=BUNDLE)
@json_option("Print the manifests as JSON instead.")
def card(bundles: tuple[Path, ...], as_json: bool) -> None:
    """Print a bundle's model card (default: the models shipped with kedge).

    BUNDLES are folders or shipped model names. The card: where the bundle is on
    this machine (a shipped model: inside the installed package), intended use,
    training data (source, counts, de-duplication), test metrics with 95 % intervals
    overall, per class and per file format, parity of every exported form, INT8
    calibration, files with sha256, and known limitations. All but the location comes
    from the bundle's kedge.json.

    \b
    Example:
      kedge card                 # both shipped models
      kedge card knee-cnn        # one of them, by name
      kedge card runs/cnn
    """
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.reports.card import card_json, render_card

    loaded = [load_bundle(b) for b in bundles] if bundles else load_models(None)
    if as_json:
        emit_json([card_json(b) for b in loaded])
        return
    click.echo("\n\n".join(render_card(b) for b in loaded))


@click.command(name="check-trt")
@click.argument("bundle", type=BUNDLE)
@click.option("--trt", "versions", type=click.Choice(["10.3", "11", "all"]), default="all", show_default=True,
              help="TensorRT version to check for: 10.3 (JetPack 6) or 11.")
@max_batch_option("The engine profile's max batch (default 16, as `kedge export --engine`).")
@json_option("Print the findings as JSON.")
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
    from kedge.runtime.bundle.manifest import load_bundle

    finish(check_bundle(load_bundle(bundle), TRT_VERSIONS if versions == "all" else (versions,), max_batch),
            as_json)


@click.command()
@click.argument("bundle", type=BUNDLE)
@data_option("Labelled class-per-folder tree: also rerun parity.")
@split_option("Parity on this split of --data only.")
@report_option("Also write the report as Markdown.", to_file=True)
@click.option("--no-build", is_flag=True, help="Do not build engines (check the ones already in the bundle).")
@click.option("--bench-iterations", default=20, show_default=True, type=click.IntRange(0, 10000),
              help="Timed calls per form and batch size (0: no benchmark).")
@json_option("Print the report as JSON.")
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
    from kedge.runtime.bundle.manifest import atomic_write_text, load_bundle

    result = verify_bundle(load_bundle(bundle), data, split, build=not no_build, bench_iterations=bench_iterations,
                           log=log)
    if report_path is not None:
        atomic_write_text(report_path, result.markdown())
    finish(result, as_json)


@click.command()
@click.argument("bundle", type=BUNDLE)
@data_option("Labelled class-per-folder tree (or several side by side).", required=True)
@split_option("Only the files the bundle's split.csv put in this split.")
@click.option("--split-manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Take --split (and sources) from this split.csv, e.g. another bundle's, to compare two "
                   "models on one held-out split.")
@source_options
@backend_option(references=True, help="keras: the original (needs the [train] extra).")
@precision_option()
@allow_unverified_option
@batch_size_option(16, most=1024)
@plot_option("Write a per-source chart (PNG; needs matplotlib).")
@quiet_option("No progress bar.")
@json_option()
def audit(bundle: Path, data: Path, split: str | None, split_manifest: Path | None, backend: str,
          precision: str | None, allow_unverified: bool, batch_size: int, plot: Path | None, quiet: bool,
          as_json: bool, **sources: Any) -> None:
    """Check whether BUNDLE answers from the image's source instead of the bone.

    \b
    Per source: n, accuracy, balanced accuracy, recall per class and the share of
    the most frequent answer (binary models: ROC AUC and sensitivity/specificity).
    Flags any source (n >= 5) where one answer takes 90 % or more of the images,
    and runs a cue test: if a small classifier predicts the source from the
    model's outputs better than from the true labels, the outputs carry the
    source. Also prints the per-format table. Exit status 1 when anything is
    flagged, so CI can gate on it.

    \b
    With an input envelope (`kedge envelope`): per source, the share of images
    inside it; a validated source's balanced accuracy inside and outside; an
    unvalidated source's answer mix (it is described, not judged by its labels).
    Use --split test for a held-out check: the envelope was fitted and
    thresholded on the validated sources' train and val images.

    \b
    Sources come from --sources/--source-rule, else from the bundle's split.csv.
    Examples:
      kedge audit runs/cnn --data ../shared/data --split test
      kedge audit runs/cnn --data ../shared/data --sources ../shared/data/manifest.csv \\
          --source-column collection --plot audit.png
      kedge audit old-bundle --data ../shared/data --split test --split-manifest runs/cnn/split.csv
    """
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.envelope.audit import format_section
    from kedge.runtime.inputs.sources import labelled_items
    from kedge.runtime.reports.explain import require_matplotlib
    from kedge.runtime.reports.shortcut import audit_bundle, format_audit

    spec = source_spec(sources)
    if plot is not None:
        require_matplotlib("kedge audit --plot")
    loaded = load_bundle(bundle)
    items = labelled_items(loaded, data, split, spec, split_manifest)
    report = audit_bundle(loaded, items, lambda: open_runner(loaded, backend, precision, allow_unverified), data,
                          split, split_manifest, batch_size, progress=not quiet and not as_json)
    if plot is not None:
        from kedge.runtime.reports.shortcut_plot import plot_audit

        plot_audit(report, plot)
    if as_json:
        emit_json(report)
    else:
        click.echo(format_audit(report))
        click.echo(format_section(report["envelope"], loaded.name))
        for failure in report["failures"]:
            click.echo(f"kedge: error: {failure['path']}: {failure['problem']}", err=True)
    if report["flags"] or report["failures"]:
        sys.exit(1)


COMMANDS = [info, card, check_trt, verify, audit]
