"""The `kedge` command. Each command is a thin layer over the modules that do the work.

Heavy imports (TensorFlow above all) happen inside the commands that need them, so
`kedge --help` is instant and the lean runtime never loads TensorFlow. A KedgeError
becomes one line on stderr and exit status 1, never a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

import kedge
from kedge import cli_run
from kedge.cli_device import int8_tool_options
from kedge.cli_device import register as register_device_commands
from kedge.options import BUNDLE, backend_option, precision_option, source_options
from kedge.options import csv_list as _csv_list
from kedge.options import echo_parity as _echo_parity
from kedge.options import emit_json as _emit_json
from kedge.options import load_models as _load_models
from kedge.options import log as _log
from kedge.options import positive_int as _positive_int
from kedge.options import source_spec as _source_spec
from kedge.runtime.errors import KedgeError, safe_name


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KedgeError as err:
            click.echo(f"kedge: error: {' '.join(safe_name(str(err)).split())}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("kedge: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(kedge.__version__, prog_name="kedge")
def main() -> None:
    """kedge: knee X-ray osteoporosis classifiers, from training to the edge.

    \b
    Right away, with the two models shipped in kedge (lean install: pip install 'kedge[cpu]'):
      kedge infer knee.png scans/                    # osteoporosis probability + 3-class result
      kedge card                                     # the models' cards: data, metrics, limits
      kedge info                                     # this machine's backends and CPU features
    \b
    With the [explain] extra (matplotlib):
      kedge explain knee.png                         # what drove each answer (PNG maps)
    \b
    Your own model:
      kedge train knee-cnn --data DIR --out runs/cnn
      kedge export runs/cnn --int8 --calib DIR --calib-split train --data DIR --split test
      kedge infer scans/ --model runs/cnn --audit readings.jsonl
    \b
    A BUNDLE (or --model) is a bundle folder or a shipped model's name:
      kedge verify knee-cnn                          # `kedge info` shows where they are installed

    Research use only, not a diagnostic device.
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(as_json: bool) -> None:
    """List the architectures with classes, input shape and parameter counts.

    The counts are those of the full-size models (checked against the built models
    in the test suite), so this needs no TensorFlow.

    \b
    Examples:
      kedge models
      kedge models --json
    """
    from kedge.runtime.preprocess import INPUT_SHAPE
    from kedge.train.models import ARCHITECTURES

    rows: list[dict[str, Any]] = []
    for arch in ARCHITECTURES.values():
        rows.append({"name": arch.name, "classes": list(arch.classes), "input_shape": list(INPUT_SHAPE),
                     "parameters": arch.parameters, "default_epochs": arch.epochs, "options": arch.options,
                     "paper": arch.paper})
    if as_json:
        _emit_json(rows)
        return
    click.echo(f"{'model':<14}{'classes':<36}{'input':<13}{'total':>12}{'trainable':>12}{'non-trainable':>15}")
    for row in rows:
        p = row["parameters"]
        click.echo(f"{row['name']:<14}{', '.join(row['classes']):<36}{'x'.join(map(str, row['input_shape'])):<13}"
                   f"{p['total']:>12,}{p['trainable']:>12,}{p['non_trainable']:>15,}")


@main.command()
@click.argument("model", type=click.Choice(["resnet50-gru", "knee-cnn"]))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Class-per-folder image tree (e.g. DIR/Normal, DIR/Osteoporosis).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle folder to create.")
@click.option("--classes",
              help="Comma-separated classes (default: the model's). Folder names match case-insensitively.")
@click.option("--epochs", type=int, help="Default: the paper's (100 for resnet50-gru, 30 for knee-cnn).")
@click.option("--batch-size", default=16, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Adam learning rate.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the split, augmentation and weights.")
@click.option("--patience", default=10, show_default=True, type=int,
              help="Stop after this many epochs without a better --select score on validation (0: never).")
@click.option("--split", "fractions", default="0.7,0.15,0.15", show_default=True,
              help="Train,val,test fractions; whole duplicate groups stay in one split.")
@click.option("--weights", help="resnet50-gru backbone: imagenet, none (default) or a ResNet50 no-top .h5 path.")
@click.option("--freeze-backbone/--fine-tune", default=None, help="resnet50-gru: freeze ResNet50 (default: fine-tune).")
@click.option("--gru-units", type=int, help="resnet50-gru: GRU width (default 128).")
@click.option("--width", type=float, help="Channel multiplier (default 1.0; below 1 for quick experiments).")
@click.option("--dropout", type=float, help="knee-cnn: dropout after each dense layer (default 0.5).")
@click.option("--bn-momentum", type=float,
              help="BatchNorm momentum (default 0.9; Keras' 0.99 lags on small data sets).")
@click.option("--mixed-precision", is_flag=True, help="float16 compute on GPUs with tensor cores.")
@click.option("--no-augment", is_flag=True, help="Turn off all augmentation of the training images.")
@click.option("--no-source-augment", is_flag=True,
              help="Keep flips, shifts and rotations but turn off the source-erasing changes (JPEG re-encoding, "
                   "down/upscaling, blur, noise, exposure).")
@source_options
@click.option("--balance", type=click.Choice(["source-class", "class", "none"]),
              help="Loss weights: every (source, class) cell, or every class, counts the same "
                   "(default: source-class with sources, else none).")
@click.option("--select", type=click.Choice(["mean-source", "worst-source", "val-loss"]),
              help="Keep the epoch with the best mean (or worst) per-source validation balanced accuracy, or the "
                   "lowest validation loss (default: mean-source with sources, else val-loss). With the per-source "
                   "choices, an epoch that gives one answer to 90 %% or more of a source's images is kept only if "
                   "every epoch did.")
@click.option("--unvalidated-source", "unvalidated_sources", multiple=True, metavar="NAME",
              help="A source whose labels are no target (e.g. A, ultrasound T-scores): it stays in validation "
                   "and test, where no epoch may give it one answer, but the --select score ignores it. Repeatable.")
@click.option("--train-unvalidated/--no-train-unvalidated", default=True, show_default=True,
              help="Whether the --unvalidated-source images are in the training split (validation and test keep "
                   "them either way, so both variants share one split).")
@click.option("--adversary", default=0.0, show_default=True, type=float,
              help="Domain-adversarial head: a source classifier on the penultimate features behind a "
                   "gradient-reversal layer of this weight (e.g. 0.3), ramped up over the epochs; needs sources. "
                   "Training only: the bundle's model has no extra output.")
@click.option("--label-smoothing", default=0.0, show_default=True, type=float,
              help="Spread this much of each label over all classes (e.g. 0.1, for noisy labels).")
@click.option("--class-weights", is_flag=True, help="Weight the loss by inverse class frequency (training split).")
@click.option("--search", "search_run", is_flag=True,
              help="Recipe search: score the validation split at the end, never the test split (which the "
                   "final run reads once).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only once the new bundle is complete).")
@click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle manifest as JSON at the end.")
def train(model: str, data: Path, out: Path, classes: str | None, fractions: str, weights: str | None,
          freeze_backbone: bool | None, gru_units: int | None, width: float | None, dropout: float | None,
          bn_momentum: float | None, no_augment: bool, no_source_augment: bool, search_run: bool, quiet: bool,
          as_json: bool, **settings: Any) -> None:
    """Train MODEL on a labelled folder and write a bundle (model, kedge.json, plots, split).

    \b
    Examples:
      kedge train knee-cnn --data ../shared/data/knee-3class --out runs/cnn
      kedge train resnet50-gru --data ../shared/data/knee-3class --out runs/gru --epochs 20
      kedge train knee-cnn --data ../shared/data --out runs/cnn \
          --sources ../shared/data/manifest.csv --source-column collection
    The binary resnet50-gru reads only the Normal and Osteoporosis folders. --data may
    hold several class trees side by side (../shared/data/{knee-3class,knee-fullres}).
    With sources, the split is stratified by (source, class), the loss weights make
    every class count the same within each source, and the kept epoch is the one whose
    worst source does best on validation: so a model cannot score by learning the source.
    Trains on a CUDA GPU when TensorFlow sees one, else on the CPU (and says which).
    """
    from kedge.runtime.folders import parse_classes
    from kedge.train.fit import TrainSettings
    from kedge.train.fit import train as run_training
    from kedge.train.models import get_architecture

    given = {"weights": weights, "freeze_backbone": freeze_backbone, "gru_units": gru_units, "width": width,
             "dropout": dropout, "bn_momentum": bn_momentum}
    options = {key: value for key, value in given.items() if value is not None}
    wrong = sorted(set(options) - set(get_architecture(model).options))
    if wrong:
        raise KedgeError(f"{model} has no option {', '.join('--' + w.replace('_', '-') for w in wrong)}")
    sources = _source_spec(settings)
    manifest = run_training(TrainSettings(
        model=model, data=data, out=out, classes=parse_classes(classes) if classes else None,
        fractions=_fractions(fractions), augment=not no_augment, source_augment=not no_source_augment,
        sources=sources, model_options=options, score_test=not search_run,
        progress=not quiet, **settings), log=_log)
    if as_json:
        _emit_json(manifest)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise KedgeError(f"--split {text!r}: give three positive fractions that sum to 1, e.g. 0.7,0.15,0.15")
    return parts


@main.command()
@click.argument("bundle", type=BUNDLE)
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Labelled class-per-folder tree.")
@click.option("--split", type=click.Choice(["train", "val", "test"]),
              help="Only the files the bundle's split manifest put in this split.")
@source_options
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate(bundle: Path, data: Path, split: str | None, batch_size: int, quiet: bool, as_json: bool,
             **sources: Any) -> None:
    """Score BUNDLE's Keras model on a labelled folder.

    Reports accuracy with its 95 % Wilson interval, per-class and macro
    precision/recall/F1, the confusion matrix, and per source and per file format:
    n, accuracy, balanced accuracy, recall per class and the share of the most
    frequent answer (binary models: ROC AUC, sensitivity, specificity). Sources come
    from --sources/--source-rule, else from the bundle's split.csv. Unreadable images
    are listed and skipped; the exit status is then 1. Needs the [train] extra.

    \b
    Examples:
      kedge evaluate runs/cnn --data ../shared/data/knee-3class --split test
      kedge evaluate runs/cnn --data ../shared/data --split test \\
          --sources ../shared/data/manifest.csv --source-column collection --json
    """
    from kedge.runtime.evaluate import format_report
    from kedge.train.evaluate import evaluate_bundle

    report = evaluate_bundle(bundle, data, split, batch_size, progress=not quiet, sources=_source_spec(sources))
    if as_json:
        _emit_json(report)
    else:
        click.echo(format_report(report, f"{report['model']} on {data} ({report['split']}), backend keras"))
    if report["failures"]:
        sys.exit(1)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out-dir", type=click.Path(path_type=Path),
              help="Write each model input as an 8-bit 224x224 PNG here, to see what the model sees.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def preprocess(inputs: tuple[str, ...], out_dir: Path | None, as_json: bool) -> None:
    """Run kedge's single preprocessing step on images (files, folders, globs).

    Prints each tensor's statistics; a file that cannot be used gets one line on
    stderr and the exit status is 1, while the other files are still processed.

    \b
    Example:
      kedge preprocess knee.png scans/ --out-dir /tmp/seen
    """
    import numpy as np

    from kedge.runtime.bundle import atomic_path
    from kedge.runtime.errors import ImageError
    from kedge.runtime.folders import expand_inputs
    from kedge.runtime.preprocess import PREPROCESS_VERSION
    from kedge.runtime.preprocess import preprocess as run_preprocess

    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise KedgeError(f"{out_dir}: --out-dir exists and is not a folder")
    rows, failed, used_names = [], 0, set()
    for path in expand_inputs(inputs):
        try:
            x = run_preprocess(path)
        except ImageError as err:
            click.echo(f"kedge: error: {err}", err=True)
            failed += 1
            continue
        row = {"path": str(path), "shape": list(x.shape), "min": float(x.min()), "mean": float(x.mean()),
               "max": float(x.max()), "preprocessing": PREPROCESS_VERSION}
        if out_dir is not None:
            import cv2

            name, n = f"{path.stem}.png", 1
            while name in used_names:  # Normal/1.png and Osteoporosis/1.png must not overwrite each other
                n += 1
                name = f"{path.stem}-{n}.png"
            used_names.add(name)
            try:
                with atomic_path(out_dir / name) as tmp:
                    tmp.write_bytes(cv2.imencode(".png", np.round(x[:, :, 0] * 255).astype(np.uint8))[1].tobytes())
            except OSError as err:  # a file where a folder on the way should be, permissions, a full disk
                raise KedgeError(f"{out_dir / name}: cannot be written ({err.strerror or type(err).__name__})") \
                    from None
            row["view"] = str(out_dir / name)
        rows.append(row)
        if not as_json:
            click.echo(f"{path}: {'x'.join(map(str, x.shape))} float32, min {row['min']:.3f} "
                       f"mean {row['mean']:.3f} max {row['max']:.3f}")
    if as_json:
        _emit_json(rows)
    if failed:
        sys.exit(1)


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--classes", default="Normal,Osteopenia,Osteoporosis", show_default=True,
              help="Comma-separated classes; folder names match case-insensitively.")
@click.option("--split", "fractions", default="0.7,0.15,0.15", show_default=True, help="Train,val,test fractions.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--write-split", type=click.Path(path_type=Path), help="Also write the split manifest (CSV) here.")
@source_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dataset(data: Path, classes: str, fractions: str, seed: int, write_split: Path | None, as_json: bool,
            **sources: Any) -> None:
    """Check a labelled folder the way `kedge train` will use it, without training.

    Decodes every image, finds duplicates (byte-identical, resized or re-encoded
    copies of one radiograph), drops groups with conflicting labels, and shows the
    seeded split, stratified by (source, class). With sources it shows the class mix
    of each source and warns when the source alone predicts the class better than the
    class prior, or when a source lacks a class. Exits 1 if any image is unreadable.

    \b
    Example:
      kedge dataset ../shared/data --sources ../shared/data/manifest.csv --source-column collection
    """
    from kedge.runtime.folders import parse_classes
    from kedge.runtime.sources import class_mix, mix_warnings
    from kedge.train.data import SPLITS, prepare, write_split_manifest

    prepared = prepare(data, parse_classes(classes), _fractions(fractions), seed, progress=not as_json,
                       sources=_source_spec(sources))
    kept = [e.item for e in prepared.entries if e.split != "excluded"]
    mix = class_mix(kept, prepared.classes)
    warnings = mix_warnings(mix)
    if write_split is not None:
        write_split_manifest(write_split, prepared)
    summary = prepared.summary()
    excluded = [{"path": e.relative, "class": e.item.class_name, "reason": e.note}
                for e in prepared.entries if e.split == "excluded"]
    if as_json:
        _emit_json({**summary, "class_mix_by_source": mix, "warnings": warnings, "excluded_files": excluded})
    else:
        click.echo(f"{data}: {len(prepared.entries)} images, {summary['groups']} distinct radiographs")
        click.echo(f"  {'split':<8}" + "".join(f"{c:>14}" for c in prepared.classes))
        for split in SPLITS:
            counts = summary["counts"][split]
            click.echo(f"  {split:<8}" + "".join(f"{counts.get(c, 0):>14}" for c in prepared.classes))
        if len(mix) > 1:
            click.echo(f"  {'source':<8}" + "".join(f"{c:>14}" for c in prepared.classes) + "   (all splits)")
            for source, source_counts in mix.items():
                click.echo(f"  {source[:8]:<8}" + "".join(f"{source_counts[c]:>14}" for c in prepared.classes))
        else:
            click.echo("  sources: none given (--sources or --source-rule): no per-source check")
        for warning in warnings:
            click.echo(f"  warning: {warning}")
        for row in excluded:
            click.echo(f"  excluded {row['path']}: {row['reason']}")
    if any(row["reason"].startswith("unreadable") for row in excluded):
        sys.exit(1)


@main.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to create.")
@click.option("--per-class", default=60, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--classes", default="Normal,Osteopenia,Osteoporosis", show_default=True)
@click.option("--size", default=224, show_default=True, type=click.IntRange(32, 4096), help="Image side, pixels.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def synth(out: Path, per_class: int, classes: str, size: int, seed: int, overwrite: bool) -> None:
    """Write synthetic knee radiographs (PNG, class-per-folder) for trials and tests.

    Bone texture density follows the class, so a small model learns it quickly.
    No real patient data is involved.

    \b
    Examples:
      kedge synth --out runs/synthetic-knees
      kedge synth --out runs/big --per-class 200 --size 512 --classes Normal,Osteoporosis
    """
    from kedge.runtime.folders import parse_classes
    from kedge.runtime.synthetic import write_dataset

    paths = write_dataset(out, parse_classes(classes), per_class, seed, size, overwrite)
    _log(f"wrote {len(paths)} synthetic images to {out}")



@main.command(name="export")
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
@click.option("--calib-split", type=click.Choice(["train", "val", "test"]),
              help="Calibrate only on this split of --calib (the bundle's split.csv), e.g. train, so test "
              "images never calibrate.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the calibration subset.")
@click.option("--engine", is_flag=True, help="Build TensorRT engines here (needs TensorRT and a GPU).")
@click.option("--int8-source", type=click.Choice(["qdq", "calibration-cache"]), default="qdq", show_default=True,
              help="TensorRT 10 only: build INT8 from the Q/DQ ONNX, or implicitly from the calibration cache.")
@click.option("--max-batch", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Engine optimisation profile: largest batch.")
@click.option("--opt-batch", default=1, show_default=True, type=click.IntRange(1, 4096),
              help="Engine optimisation profile: batch to tune for.")
@click.option("--workspace", "workspace_mib", type=click.IntRange(16, 1 << 20),
              help="TensorRT workspace limit in MiB (e.g. 1024 on an 8 GB Jetson).")
@click.option("--data", type=click.Path(path_type=Path),
              help="Labelled folder for the parity gate (default: --calib when it has class folders).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Parity on this split of --data only.")
@click.option("--reference", type=click.Choice(["keras", "onnx-fp32"]),
              help="Parity reference (default: keras where TensorFlow is installed).")
@click.option("--triton", "triton_repo", type=click.Path(path_type=Path),
              help="Also write a Triton model repository here (ONNX for the onnxruntime backend, engines for "
              "tensorrt, config.pbtxt with dynamic batching). Alone, it uses the forms the bundle has.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done, skipped and the parity rows as JSON.")
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
    from kedge.runtime.bundle import load_bundle

    size = None if calib_size.strip().lower() == "all" else _positive_int(calib_size, "--calib-size")
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
                                              progress=not quiet, **options), log=_log)
    if triton_repo is not None:
        from kedge.export.triton import write_repository

        for entry in write_repository(loaded, triton_repo, max_batch=options["max_batch"]):
            report.done.append(f"triton: {entry['path']} ({entry['platform']}, {entry['form']}, "
                               f"max batch {entry['max_batch_size']})")
    if as_json:
        _emit_json({"bundle": report.bundle, "done": report.done, "skipped": report.skipped,
                    "parity": report.parity, "trt_check": report.trt_check, "passed": report.passed})
    else:
        for line in report.done:
            click.echo(f"done     {line}")
        for line in report.skipped:
            click.echo(f"skipped  {line}")
        if report.parity is not None:
            _echo_parity(report.parity)
    if not report.passed:
        sys.exit(1)


@main.command()
@click.argument("bundles", nargs=-1, type=BUNDLE)
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON instead.")
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
    from kedge.runtime.bundle import load_bundle
    from kedge.runtime.card import render_card

    loaded = [load_bundle(b) for b in bundles] if bundles else _load_models(None)
    if as_json:
        _emit_json([{"location": str(b.path.resolve()), **b.manifest} for b in loaded])
        return
    click.echo("\n\n".join(render_card(b) for b in loaded))


@main.command()
@click.argument("bundle", type=BUNDLE)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to create (e.g. "
              "runtime/models/knee-cnn).")
@click.option("--forms", default="onnx-fp32,onnx-int8", show_default=True,
              help="Comma-separated ONNX forms to carry.")
@click.option("--data-source", help="Where the training images came from, for the model card (e.g. 'public "
              "Kaggle knee sets, de-identified').")
@click.option("--overwrite", is_flag=True, help="Replace --out (only once the new copy is complete).")
def ship(bundle: Path, out: Path, forms: str, data_source: str | None, overwrite: bool) -> None:
    """Copy an exported, parity-checked BUNDLE for shipping: the chosen forms, the small
    provenance files, and the model card (limitations, training data). Forms left out
    are listed with their sha256 and size.

    \b
    Example:
      kedge ship runs/gru --out runtime/models/resnet50-gru --forms onnx-fp32,onnx-int8
    """
    from kedge.export.ship import ship_bundle
    from kedge.runtime.bundle import load_bundle

    names = _csv_list(forms, "--forms") or []
    shipped = ship_bundle(load_bundle(bundle), out, names, overwrite, data_source)
    _log(f"shipped {shipped.name} to {out}: {', '.join(names)}, {shipped.section('shipped')['bytes'] / 1e6:.1f} MB")


@main.command()
@click.argument("model", type=click.Choice(["knee-cnn", "resnet50-gru"]))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The real radiographs with their manifest.csv (../shared/data).")
@click.option("--work", type=click.Path(path_type=Path), help="The full training bundle (default: runs/MODEL).")
@click.option("--out", type=click.Path(path_type=Path), help="Where the shipped copy goes (default: "
              "runtime/models/MODEL, replaced only once the new one is complete).")
@click.option("--skip-training", is_flag=True, help="Continue from the trained bundle in --work (export onwards).")
def rebuild(model: str, data: Path, work: Path | None, out: Path | None, skip_training: bool) -> None:
    """Rebuild a shipped MODEL from the real radiographs, exactly as it was made: train
    (deterministic), export the FP16 float form and both 7-bit INT8 forms with the parity
    gate on the test split and the golden set, fit the input envelope, ship. Each step is
    the kedge command printed before it runs; all of them, with their seeds, go into the
    shipped kedge.json (`rebuild`). Takes hours on a 2-core CPU; stops at the first step
    that fails, keeping --work.

    \b
    Examples:
      kedge rebuild knee-cnn --data ../shared/data
      kedge rebuild resnet50-gru --data ../shared/data --work runs/gru --out /tmp/gru
    """
    from kedge.train.rebuild import rebuild as run_rebuild

    run_rebuild(model, data, work or Path("runs") / model, out or Path("runtime/models") / model, _log,
                skip_training=skip_training)


@main.command()
@click.argument("bundles", nargs=-1, type=BUNDLE)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address Triton's HTTP, gRPC and metrics endpoints listen on. 0.0.0.0 listens on every "
              "interface, unauthenticated and unencrypted: put a TLS proxy in front instead (docs/hardening.md).")
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(1, 65535))
@backend_option()
@precision_option()
@click.option("--max-batch", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Largest batch Triton's dynamic batcher forms.")
@click.option("--queue-delay-us", default=2000, show_default=True, type=click.IntRange(0, 10_000_000),
              help="How long the batcher waits to fill a batch, microseconds.")
def serve(bundles: tuple[Path, ...], host: str, http_port: int, grpc_port: int, metrics_port: int, backend: str,
          precision: str | None, max_batch: int, queue_delay_us: int) -> None:
    """Serve BUNDLES (default: the shipped models) on a real NVIDIA Triton server.

    Triton (started by PyTriton) provides HTTP and gRPC on the KServe v2 protocol,
    dynamic batching, and health (/v2/health/ready) and metrics (:8002/metrics)
    endpoints; each model, named after its bundle, runs on kedge's own backend
    (TensorRT on a GPU, ONNX Runtime on the CPU). Clients send preprocessed tensors:
    `kedge infer --triton http://HOST:8000 IMAGE...`.

    Listens on 127.0.0.1 unless --host says otherwise. Tensors that are not finite
    or not within [0, 1] are refused with an error reply.
    Run it from a virtual environment made with the system Python (Triton's stub
    must match the interpreter exactly): see docs/triton.md.

    \b
    Examples:
      kedge serve                                   # the shipped models, on 127.0.0.1:8000
      kedge serve runs/cnn --host 10.0.0.5 --http-port 9000
    """
    from kedge.runtime.bundle import load_bundle
    from kedge.runtime.serve import serve as run_server

    loaded = [load_bundle(b) for b in bundles] if bundles else _load_models(None)
    run_server(loaded, http_port, grpc_port, metrics_port, backend, precision, max_batch, queue_delay_us, log=_log,
               host=host)


for _command in (cli_run.infer, cli_run.bench, cli_run.explain, cli_run.parity, cli_run.info):
    main.add_command(_command)

from kedge import cli_audit  # noqa: E402 (commands in their own module)

cli_audit.register(main)

from kedge import cli_envelope  # noqa: E402

cli_envelope.register(main)

register_device_commands(main)  # check-trt, golden, verify

if __name__ == "__main__":
    main()
