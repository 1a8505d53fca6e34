"""The `kedge` command. Each command is a thin layer over the modules that do the work.

Heavy imports (TensorFlow above all) happen inside the commands that need them, so
`kedge --help` is instant and the lean runtime never loads TensorFlow. A KedgeError
becomes one line on stderr and exit status 1, never a traceback.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

import kedge
from kedge.cli_device import int8_tool_options
from kedge.cli_device import register as register_device_commands
from kedge.runtime.errors import KedgeError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KedgeError as err:
            click.echo(f"kedge: error: {' '.join(str(err).split())}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("kedge: interrupted", err=True)
            ctx.exit(130)


def _log(message: str) -> None:
    click.echo(message, err=True)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(kedge.__version__, prog_name="kedge")
def main() -> None:
    """kedge: knee X-ray osteoporosis classifiers, from training to the edge.

    \b
    Right away, with the two models shipped in kedge:
      kedge infer knee.png scans/                    # osteoporosis probability + 3-class result
      kedge explain knee.png                         # what drove each answer (PNG maps)
      kedge card                                     # the models' cards: data, metrics, limits
    \b
    Your own model:
      kedge train knee-cnn --data DIR --out runs/cnn
      kedge export runs/cnn --int8 --calib DIR --calib-split train --data DIR --split test
      kedge infer scans/ --model runs/cnn --audit readings.jsonl

    Research use only, not a diagnostic device.
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(as_json: bool) -> None:
    """List the architectures with classes, input shape and parameter counts.

    Builds each full-size model with random weights to count its parameters
    (needs the [train] extra; takes a few seconds).
    """
    from kedge.runtime.preprocess import INPUT_SHAPE
    from kedge.train.models import ARCHITECTURES, build_model, parameter_counts

    rows = []
    for arch in ARCHITECTURES.values():
        counts = parameter_counts(build_model(arch.name))
        rows.append({"name": arch.name, "classes": list(arch.classes), "input_shape": list(INPUT_SHAPE),
                     "parameters": counts, "default_epochs": arch.epochs, "options": arch.options,
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
              help="Stop after this many epochs without a lower validation loss (0: never).")
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
@click.option("--no-augment", is_flag=True, help="Turn off flips, shifts and rotations of the training images.")
@click.option("--label-smoothing", default=0.0, show_default=True, type=float,
              help="Spread this much of each label over all classes (e.g. 0.1, for noisy labels).")
@click.option("--class-weights", is_flag=True, help="Weight the loss by inverse class frequency (training split).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (only once the new bundle is complete).")
@click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle manifest as JSON at the end.")
def train(model: str, data: Path, out: Path, classes: str | None, fractions: str, weights: str | None,
          freeze_backbone: bool | None, gru_units: int | None, width: float | None, dropout: float | None,
          bn_momentum: float | None, no_augment: bool, quiet: bool, as_json: bool, **settings: Any) -> None:
    """Train MODEL on a labelled folder and write a bundle (model, kedge.json, plots, split).

    \b
    Examples:
      kedge train knee-cnn --data ../shared/data/knee-3class --out runs/cnn
      kedge train resnet50-gru --data ../shared/data/knee-3class --out runs/gru --epochs 20
    The binary resnet50-gru reads only the Normal and Osteoporosis folders.
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
    manifest = run_training(TrainSettings(
        model=model, data=data, out=out, classes=parse_classes(classes) if classes else None,
        fractions=_fractions(fractions), augment=not no_augment, model_options=options,
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
    return parts  # type: ignore[return-value]


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Labelled class-per-folder tree.")
@click.option("--split", type=click.Choice(["train", "val", "test"]),
              help="Only the files the bundle's split manifest put in this split.")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate(bundle: Path, data: Path, split: str | None, batch_size: int, quiet: bool, as_json: bool) -> None:
    """Score BUNDLE's Keras model on a labelled folder.

    Reports accuracy with its 95 % Wilson interval, per-class and macro
    precision/recall/F1, the confusion matrix, and accuracy per file format.
    Unreadable images are listed and skipped; the exit status is then 1.
    """
    from kedge.runtime.evaluate import format_report
    from kedge.train.evaluate import evaluate_bundle

    report = evaluate_bundle(bundle, data, split, batch_size, progress=not quiet)
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
            with atomic_path(out_dir / name) as tmp:
                tmp.write_bytes(cv2.imencode(".png", np.round(x[:, :, 0] * 255).astype(np.uint8))[1].tobytes())
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dataset(data: Path, classes: str, fractions: str, seed: int, write_split: Path | None, as_json: bool) -> None:
    """Check a labelled folder the way `kedge train` will use it, without training.

    Decodes every image, finds duplicates (byte-identical, resized or re-encoded
    copies of one radiograph), drops groups with conflicting labels, and shows the
    seeded stratified split. Exits 1 if any image is unreadable.
    """
    from kedge.runtime.folders import parse_classes
    from kedge.train.data import SPLITS, prepare, write_split_manifest

    prepared = prepare(data, parse_classes(classes), _fractions(fractions), seed, progress=not as_json)
    if write_split is not None:
        write_split_manifest(write_split, prepared)
    summary = prepared.summary()
    excluded = [{"path": e.relative, "class": e.item.class_name, "reason": e.note}
                for e in prepared.entries if e.split == "excluded"]
    if as_json:
        _emit_json({**summary, "excluded_files": excluded})
    else:
        click.echo(f"{data}: {len(prepared.entries)} images, {summary['groups']} distinct radiographs")
        click.echo(f"  {'split':<8}" + "".join(f"{c:>14}" for c in prepared.classes))
        for split in SPLITS:
            counts = summary["counts"][split]  # type: ignore[index]
            click.echo(f"  {split:<8}" + "".join(f"{counts.get(c, 0):>14}" for c in prepared.classes))
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
    """
    from kedge.runtime.folders import parse_classes
    from kedge.train.synthetic import write_dataset

    paths = write_dataset(out, parse_classes(classes), per_class, seed, size, overwrite)
    _log(f"wrote {len(paths)} synthetic images to {out}")



@main.command(name="export")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--fp16", is_flag=True, help="Also write the FP16 ONNX (FP32 I/O) and, with --engine, an FP16 engine.")
@click.option("--int8", is_flag=True, help="Also write INT8 Q/DQ ONNX forms from --calib images (and an INT8 engine "
              "with --engine).")
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
    Anything this machine cannot do is skipped and said so.

    \b
    Examples:
      kedge export runs/cnn --fp16 --int8 --calib ../shared/data/knee-3class
      kedge export runs/cnn --engine --int8 --workspace 1024     # on the Jetson
    Calibration is cached in the bundle; the same model and images reuse it.
    Exit status 1 if the parity gate fails.
    """
    from kedge.export.pipeline import ExportReport, ExportSettings, export_bundle

    size = None if calib_size.strip().lower() == "all" else _positive_int(calib_size, "--calib-size")
    only_triton = triton_repo is not None and not any(options[k] for k in ("fp16", "int8", "engine", "data"))
    if only_triton:
        report = ExportReport(str(bundle))
    else:
        report = export_bundle(ExportSettings(bundle=bundle, calib_size=size, workspace_mib=workspace_mib,
                                              progress=not quiet, **options), log=_log)
    if triton_repo is not None:
        from kedge.export.triton import write_repository

        for entry in write_repository(bundle, triton_repo, max_batch=options["max_batch"]):
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


def _positive_int(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise KedgeError(f"{option} {text!r}: give a positive number or 'all'")
    return value


def _echo_parity(result: dict[str, Any]) -> None:
    from kedge.runtime.parity import ParityRow, format_table

    click.echo(f"parity on {result['data']} ({result['split']}, n={result['n']}), reference {result['reference']}")
    click.echo(format_table([ParityRow(**row) for row in result["rows"]]))
    for failure in result["unreadable"]:
        click.echo(f"  skipped {failure['path']}: {failure['problem']}")
    click.echo("PASSED" if result["passed"] else "FAILED")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Labelled class-per-folder tree.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Only this split of --data.")
@click.option("--reference", type=click.Choice(["keras", "onnx-fp32"]),
              help="Default: keras where TensorFlow is installed, else onnx-fp32.")
@click.option("--forms", help="Comma-separated forms to check (default: all this machine can run), e.g. "
              "onnx-fp16,onnx-int8,trt-int8.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 4096))
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: rows with form, accuracy, macro_f1, agreement, max_abs_diff, mean_abs_diff, passed.")
def parity(bundle: Path, data: Path, split: str | None, reference: str | None, forms: str | None, batch_size: int,
           quiet: bool, as_json: bool) -> None:
    """Compare every exported form of BUNDLE with the reference on labelled images.

    \b
    Per form: accuracy, macro-F1, top-1 agreement with the reference, max and mean
    |dp|. Thresholds (a row FAILS outside them):
      fp32 forms   agreement 100 %, max |dp| <= 1e-4
      fp16 forms   agreement >= 99.5 %
      int8 forms   agreement >= 98 %, accuracy within 1 point of the reference
    The result is recorded in the bundle's kedge.json. Exit status 1 on any FAILED row.
    """
    from kedge.export.parity import parity_for_bundle

    wanted = [f.strip() for f in forms.split(",") if f.strip()] if forms else None
    result = parity_for_bundle(bundle, data, split, reference, wanted, batch_size, progress=not quiet,
                               log=None if as_json else _log)
    if as_json:
        _emit_json({**result, "rows": [{k: row[k] for k in ("form", "accuracy", "macro_f1", "agreement",
                                                             "max_abs_diff", "mean_abs_diff", "passed",
                                                             "backend", "n", "reference", "problems")}
                                       for row in result["rows"]]})
    else:
        _echo_parity(result)
    if not result["passed"]:
        sys.exit(1)


def _model_option(f: Any) -> Any:
    return click.option("--model", "-m", "model", envvar="KEDGE_MODEL", type=click.Path(path_type=Path),
                        help="Bundle folder (default: $KEDGE_MODEL, else the models shipped with kedge).")(f)


def _load_models(model: Path | None) -> list[Any]:
    """--model (or $KEDGE_MODEL) when given, else every model shipped with kedge."""
    from kedge.runtime.bundle import load_bundle
    from kedge.runtime.shipped import shipped_bundles

    if model is not None:
        return [load_bundle(model)]
    shipped = shipped_bundles()
    if not shipped:
        raise KedgeError("no model: pass --model BUNDLE (a folder made by `kedge train`) or set KEDGE_MODEL")
    return [load_bundle(path) for path in shipped]


def _csv_list(text: str | None, option: str, allowed: tuple[str, ...] | None = None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if not items or bad:
        raise KedgeError(f"{option} {text!r}: choose from {', '.join(allowed or ())}")
    return items


def _positive_ints(text: str, option: str) -> list[int]:
    values = [_positive_int(t.strip(), option) for t in text.split(",") if t.strip()]
    if not values:
        raise KedgeError(f"{option} {text!r}: give positive numbers, e.g. 1,8")
    return values


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@_model_option
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), default="auto",
              show_default=True, help="auto: TensorRT when TensorRT, a GPU and a matching engine are present; "
              "else ONNX Runtime.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
              help="Default: the fastest form the backend has (INT8 on the CPU when the bundle has it).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 4096))
@click.option("--threads", type=click.IntRange(1, 1024), help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--workers", type=click.IntRange(0, 64),
              help="Threads decoding the next files while a batch runs (default: up to 4; 0: decode inline).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay a captured CUDA graph for each batch size.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list: path, label, probabilities, backend, form.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: path, label, one p_<class> column per class, "
              "backend, form.")
@click.option("--full-decode", is_flag=True, help="Decode large JPEGs in full instead of from their DCT at 1/2-1/8 "
              "scale: slower, bit-for-bit preprocessing v1 (a borderline image can flip between the two).")
@click.option("--triton", "triton_url", metavar="URL",
              help="Run the model on a Triton server (e.g. http://gpu-host:8000) serving this bundle's model name; "
              "decoding and preprocessing stay here.")
@click.option("--audit", type=click.Path(path_type=Path),
              help="Append one JSON line per reading to this file (time, input sha256, model, form sha256, "
              "backend, precision, runtime version, answer), fsynced line by line.")
@click.option("--quiet", is_flag=True, help="No progress bar and no backend line on stderr.")
def infer(inputs: tuple[str, ...], model: Path | None, backend: str, precision: str | None, batch_size: int,
          threads: int | None, workers: int | None, cuda_graph: bool, as_json: bool, as_csv: bool,
          full_decode: bool, triton_url: str | None, audit: Path | None, quiet: bool) -> None:
    """Classify knee radiographs: the predicted class and every class's probability.

    INPUTS are files, folders (searched recursively) and glob patterns. A file that
    cannot be used gets one line on stderr naming it and the problem; the others are
    still classified, and the exit status is 1 at the end.

    \b
    Examples:
      kedge infer knee.jpg --model runs/cnn
      kedge infer scans/ 'more/*.png' --model runs/cnn --csv > results.csv
      kedge infer scans/ --model runs/cnn --backend onnxruntime --precision fp32 --json
    The backend and form used are printed on stderr (and in every JSON/CSV row).
    """
    import contextlib
    import csv

    from tqdm import tqdm

    from kedge.runtime.audit import AuditLog
    from kedge.runtime.folders import expand_inputs
    from kedge.runtime.infer import Failure, Prediction, Predictor

    if as_json and as_csv:
        raise KedgeError("--json and --csv: choose one")
    bundles = _load_models(model)
    paths = expand_inputs(inputs)
    if not paths:
        raise KedgeError(f"{' '.join(inputs)}: no images found (PNG, JPEG, BMP or TIFF)")
    results: list[list[Prediction | Failure]] = []
    bar = tqdm(total=len(paths) * len(bundles), unit="img", file=sys.stderr, leave=False,
               disable=quiet or len(paths) < 2 * batch_size or None)
    with contextlib.ExitStack() as stack:
        trail = stack.enter_context(AuditLog(audit)) if audit is not None else None
        for bundle in bundles:
            with Predictor(bundle, backend, precision, threads, cuda_graph, triton_url) as predictor:
                if not quiet:
                    tqdm.write(f"{bundle.name}: {predictor.backend.name} ({predictor.choice.reason})",
                               file=sys.stderr)
                found = []
                for result in predictor.predict(paths, batch_size, workers, progress=bar.update,
                                                reduced=not full_decode):
                    if trail is not None and isinstance(result, Prediction):
                        trail.record(predictor.audit_entry(result))
                    found.append(result)
                results.append(found)
    bar.close()
    failed = [r for r in results[0] if isinstance(r, Failure)]  # decoding failures are the same for every model
    for failure in failed:
        _log(f"kedge: error: {failure.path}: {failure.problem}")
    per_image = [[r for r in row if isinstance(r, Prediction)] for row in zip(*results, strict=True)]
    per_image = [row for row in per_image if row]
    models = [b.name for b in bundles]
    if as_json:
        _emit_json([{**p.as_dict(), "model": name} for row in per_image for p, name in zip(row, models,
                                                                                               strict=True)])
    elif as_csv:
        classes = list(dict.fromkeys(c for b in bundles for c in b.classes))
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "model", "label", *(f"p_{c}" for c in classes), "backend", "form"])
        for row in per_image:
            for p, name in zip(row, models, strict=True):
                writer.writerow([p.path, name, p.label,
                                 *(f"{p.probabilities[c]:.6f}" if c in p.probabilities else "" for c in classes),
                                 p.backend, p.form])
    else:
        for row in per_image:
            answers = [f"{p.label}  ({'  '.join(f'{c} {v:.3f}' for c, v in p.probabilities.items())})"
                       for p in row]
            if len(row) == 1:
                click.echo(f"{row[0].path}: {answers[0]}")
            else:
                click.echo(f"{row[0].path}: " + "; ".join(f"{name} {a}" for name, a in zip(models, answers,
                                                                                          strict=True)))
    if failed:
        _log(f"kedge: {len(failed)} of {len(paths)} file(s) could not be classified")
        sys.exit(1)


@main.command()
@_model_option
@click.option("--backend", "backends", help="Comma-separated: keras, onnxruntime, tensorrt (default: every one "
              "this machine has; keras needs TensorFlow).")
@click.option("--precision", "precisions", help="Comma-separated: fp32, fp16, int8 (default: all).")
@click.option("--forms", help="Exact forms instead, e.g. keras,onnx-fp32,onnx-int8-qdq,trt-int8.")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--modes", default="engine,end_to_end", show_default=True,
              help="engine: tensor in, probabilities out. end_to_end: file bytes in (decode + preprocess "
              "included).")
@click.option("--images", "image_paths", multiple=True,
              help="Files/folders whose bytes end_to_end decodes (default: a synthetic 2048 px JPEG).")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(0, 100_000))
@click.option("--iterations", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--threads", type=click.IntRange(1, 1024), help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay captured CUDA graphs.")
@click.option("--plot", type=click.Path(path_type=Path), help="Also write a PNG bar chart here.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: rows (backend, form, batch_size, mode, mean_ms, "
              "p50_ms, p90_ms, p99_ms, throughput, ratios) and the preprocessing timings.")
def bench(model: Path | None, backends: str | None, precisions: str | None, forms: str | None, batch_sizes: str,
          modes: str, image_paths: tuple[str, ...], warmup: int, iterations: int, threads: int | None,
          cuda_graph: bool, plot: Path | None, quiet: bool, as_json: bool) -> None:
    """Time the model's forms side by side in one run, as trtexec does.

    Warm-up, then many timed iterations; mean, p50, p90, p99 latency (ms) and
    throughput (images/s) per backend, form, batch size and mode. Ratios are within
    each mode and batch size: `x fastest` (1.00 is the fastest row) and `vs keras`
    (Keras's mean over this row's: above 1 is faster than Keras). Also times
    decode + preprocess of the end_to_end images, full JPEG decode against reduced.

    \b
    Examples:
      kedge bench --model runs/cnn                               # everything this machine can run
      kedge bench --model runs/cnn --backend onnxruntime --precision fp32,int8 --batch-sizes 1
      kedge bench --model runs/cnn --images scans/ --plot bench.png --json
    """
    from kedge.runtime.bench import MODES, Target, run_bench, synthetic_jpeg, time_preprocess
    from kedge.runtime.bench import plot as plot_rows
    from kedge.runtime.folders import expand_inputs
    from kedge.runtime.forms import ALL_FORMS, available_forms, form, open_form
    from kedge.runtime.preprocess import preprocess as run_preprocess
    from kedge.runtime.preprocess import read_bytes
    from kedge.train.backend import keras_available, open_keras

    bundle = _load_models(model)[0]  # the first shipped model without --model
    wanted_backends = _csv_list(backends, "--backend", ("keras", "onnxruntime", "tensorrt"))
    wanted_precisions = _csv_list(precisions, "--precision", ("fp32", "fp16", "int8"))
    mode_list = _csv_list(modes, "--modes", MODES) or list(MODES)
    sizes = _positive_ints(batch_sizes, "--batch-sizes")
    has_keras = "keras" in bundle.manifest.get("artifacts", {}) and keras_available()

    def keras_target() -> Target:
        return Target("keras", "keras", lambda: open_keras(bundle, "--forms keras"))

    def form_target(name: str) -> Target:
        spec = form(name)
        return Target(name, spec.backend, lambda: open_form(bundle, spec, threads=threads, cuda_graph=cuda_graph))

    if forms is not None:
        names = _csv_list(forms, "--forms", ("keras", *ALL_FORMS)) or []
        if "keras" in names and not has_keras:
            raise KedgeError("--forms keras: needs TensorFlow (the [train] extra) and the bundle's model.keras")
        targets = [keras_target() if n == "keras" else form_target(n) for n in names]
    else:
        default = [f for f in available_forms(bundle) if f.name != "onnx-int8-qdq"]  # the TensorRT-only layout
        targets = ([keras_target()] if has_keras else []) + [form_target(f.name) for f in default]
        targets = [t for t in targets
                   if (wanted_backends is None or t.backend in wanted_backends)
                   and (wanted_precisions is None or (t.form == "keras" and "fp32" in wanted_precisions)
                        or (t.form != "keras" and form(t.form).precision in wanted_precisions))]
    if not targets:
        raise KedgeError(f"{bundle.path}: nothing to time for those filters (see `kedge info` and `kedge export`)")
    if image_paths:
        paths = expand_inputs(image_paths)
        images = [read_bytes(p) for p in paths]
        for path, data in zip(paths, images, strict=True):
            run_preprocess(data, str(path))  # a bad file fails here, with its name, before any timing
    else:
        images = [synthetic_jpeg()]
    rows = run_bench(targets, images, sizes, mode_list, warmup, iterations,
                     progress=None if quiet or as_json else (lambda what: _log(f"timing {what}")))
    decode = time_preprocess(images)
    if plot is not None:
        plot_rows(rows, plot, f"{bundle.name}: mean latency per image")
    if as_json:
        _emit_json({"model": bundle.name, "rows": [r.as_dict() for r in rows], "preprocess": decode,
                    "images": len(images), "machine": _machine()})
        return
    click.echo(f"{bundle.name} on {_machine()}; {warmup} warm-up + {iterations} timed iterations")
    click.echo(f"{'backend':<12}{'form':<15}{'batch':>5}  {'mode':<11}{'mean':>8}{'p50':>8}{'p90':>8}{'p99':>8}"
               f"{'img/s':>9}{'x fastest':>10}{'vs keras':>9}")
    for r in sorted(rows, key=lambda r: (r.mode != "engine", r.batch_size)):
        keras = f"{r.speedup_vs_keras:.2f}x" if r.speedup_vs_keras is not None else "-"
        click.echo(f"{r.backend:<12}{r.form:<15}{r.batch_size:>5}  {r.mode:<11}{r.mean_ms:>8.2f}{r.p50_ms:>8.2f}"
                   f"{r.p90_ms:>8.2f}{r.p99_ms:>8.2f}{r.throughput:>9.1f}{r.vs_fastest:>9.2f}x{keras:>9}")
    click.echo("decode + preprocess per image (ms): " + "; ".join(
        f"{d['decode']} mean {d['mean_ms']:.2f}, p50 {d['p50_ms']:.2f}" for d in decode)
        + f"; reduced is {decode[1]['speedup']:.2f}x faster")
    if plot is not None:
        click.echo(f"chart: {plot}")


@main.command()
@click.argument("bundles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON instead.")
def card(bundles: tuple[Path, ...], as_json: bool) -> None:
    """Print a bundle's model card (default: the models shipped with kedge).

    Intended use, training data (source, counts, de-duplication), test metrics with
    95 % intervals overall, per class and per file format, parity of every exported
    form, INT8 calibration, files with sha256, and known limitations. All of it comes
    from the bundle's kedge.json.

    \b
    Example:
      kedge card                 # both shipped models
      kedge card runs/cnn
    """
    from kedge.runtime.bundle import load_bundle
    from kedge.runtime.card import render_card

    loaded = [load_bundle(b) for b in bundles] if bundles else _load_models(None)
    if as_json:
        _emit_json([b.manifest for b in loaded])
        return
    click.echo("\n\n".join(render_card(b.manifest) for b in loaded))


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
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

    names = _csv_list(forms, "--forms") or []
    manifest = ship_bundle(bundle, out, names, overwrite, data_source)
    _log(f"shipped {manifest['model']['name']} to {out}: {', '.join(names)}, "
         f"{manifest['shipped']['bytes'] / 1e6:.1f} MB")


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@_model_option
@click.option("--out", type=click.Path(path_type=Path),
              help="PNG to write (default: IMAGE's name + .<model>.explain.png in the current folder).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime", "keras"]), default="auto",
              show_default=True, help="keras needs TensorFlow; the others as in `kedge infer`.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]))
@click.option("--method", type=click.Choice(["occlusion", "gradcam"]), default="occlusion", show_default=True,
              help="gradcam: Grad-CAM on the Keras model (needs TensorFlow; implies --backend keras).")
@click.option("--class", "class_name", help="Explain this class (default: the predicted one).")
@click.option("--patch", default=32, show_default=True, type=click.IntRange(4, 224), help="Occluding patch, pixels.")
@click.option("--stride", default=16, show_default=True, type=click.IntRange(1, 224), help="Patch step, pixels.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def explain(image: Path, model: Path | None, out: Path | None, backend: str, precision: str | None,
            method: str, class_name: str | None, patch: int, stride: int, as_json: bool) -> None:
    """Draw what drove a prediction: an occlusion-sensitivity map over the radiograph.

    Patches of the 224x224 input are greyed out one at a time (all masked copies run
    in batches through the same backend), and the drop in the class's probability is
    mapped: red areas raised the class, blue ones lowered it. No gradients are
    needed, so it runs on TensorRT, ONNX Runtime or Keras. Without --model, each
    shipped model gets its own PNG.

    \b
    Examples:
      kedge explain knee.png                          # both shipped models
      kedge explain knee.png --model runs/cnn --out knee-cnn.png --patch 24 --stride 8
    """
    import numpy as np

    from kedge.runtime.explain import Explanation, occlusion, render
    from kedge.runtime.forms import choose_form, open_form
    from kedge.runtime.preprocess import preprocess as run_preprocess

    x = run_preprocess(image)
    bundles = _load_models(model)
    written = []
    if method == "gradcam":
        backend = "keras"
    for bundle in bundles:
        if backend == "keras":
            from kedge.train.backend import open_keras

            opened: Any = open_keras(bundle, "--backend keras")
            form_name = "keras"
        else:
            choice = choose_form(bundle, backend, precision)
            opened, form_name = open_form(bundle, choice.form), choice.form.name
        classes = bundle.classes
        if class_name is not None and class_name not in classes:
            raise KedgeError(f"--class {class_name!r}: {bundle.name} has {', '.join(classes)}")
        wanted = classes.index(class_name) if class_name else None
        with opened as runner:
            if method == "gradcam":
                from kedge.train.gradcam import grad_cam

                heatmap, index, probability = grad_cam(runner.model, x, wanted)
                result = Explanation(heatmap, index, probability, patch=0, stride=0)
            else:
                result = occlusion(runner, x, wanted, patch, stride)
        target = _explain_path(image, out, bundle.name, several=len(bundles) > 1)
        title = (f"{image.name}: {bundle.name} says {classes[result.class_index]} "
                 f"(p = {result.probability:.2f}; {form_name})")
        render(x, result.heatmap, title, target, method)
        peak = np.unravel_index(int(np.argmax(result.heatmap)), result.heatmap.shape)
        written.append({"image": str(image), "model": bundle.name, "form": form_name, "png": str(target),
                        "class": classes[result.class_index], "probability": result.probability,
                        "method": method, "peak_yx": [int(peak[0]), int(peak[1])]})
        if not as_json:
            click.echo(f"{target}: {title}")
    if as_json:
        _emit_json(written)


@main.command()
@click.argument("bundles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(1, 65535))
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime"]), default="auto",
              show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]))
@click.option("--max-batch", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Largest batch Triton's dynamic batcher forms.")
@click.option("--queue-delay-us", default=2000, show_default=True, type=click.IntRange(0, 10_000_000),
              help="How long the batcher waits to fill a batch, microseconds.")
def serve(bundles: tuple[Path, ...], http_port: int, grpc_port: int, metrics_port: int, backend: str,
          precision: str | None, max_batch: int, queue_delay_us: int) -> None:
    """Serve BUNDLES (default: the shipped models) on a real NVIDIA Triton server.

    Triton (started by PyTriton) provides HTTP and gRPC on the KServe v2 protocol,
    dynamic batching, and health (/v2/health/ready) and metrics (:8002/metrics)
    endpoints; each model, named after its bundle, runs on kedge's own backend
    (TensorRT on a GPU, ONNX Runtime on the CPU). Clients send preprocessed tensors:
    `kedge infer --triton http://HOST:8000 IMAGE...`.

    Run it from a virtual environment made with the system Python (Triton's stub
    must match the interpreter exactly): see README, Triton.
    """
    from kedge.runtime.bundle import load_bundle
    from kedge.runtime.serve import serve as run_server

    loaded = [load_bundle(b) for b in bundles] if bundles else _load_models(None)
    run_server(loaded, http_port, grpc_port, metrics_port, backend, precision, max_batch, queue_delay_us, log=_log)


def _explain_path(image: Path, out: Path | None, model: str, several: bool) -> Path:
    """--out as given for one model; with several, one file each, named after the model."""
    if out is None:
        return Path(f"{image.stem}.{model}.explain.png")
    return out.with_name(f"{out.stem}.{model}{out.suffix}") if several else out


def _machine() -> str:
    from kedge.runtime.info import cpu_info, gpu_info

    cpu = cpu_info()
    gpu = gpu_info()
    return f"{cpu['model']} ({cpu['cores']} cores)" + (f", {gpu['name']}" if gpu else ", no GPU")


@main.command()
@click.option("--model", "-m", "model", type=click.Path(path_type=Path), help="Also list this bundle's engines "
              "and whether they run here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(model: Path | None, as_json: bool) -> None:
    """What this machine offers kedge: versions, ONNX Runtime providers, TensorRT, GPU,
    CPU INT8 features (AVX2, AVX512-VNNI), and a bundle's engines.

    \b
    Example:
      kedge info --model runs/cnn
    """
    from kedge.runtime.info import collect

    data = collect(model)
    if as_json:
        _emit_json(data)
        return
    ort, trt, gpu, cpu = data["onnxruntime"], data["tensorrt"], data["gpu"], data["cpu"]
    lines = [
        f"kedge          {data['kedge']} (preprocessing v{data['preprocess_version']}), Python {data['python']}",
        f"numpy          {data['numpy']}",
        f"OpenCV         {data['opencv']}",
        "ONNX Runtime   " + (f"{ort['version']}, providers {', '.join(ort['providers'])}; kedge uses "
                            f"{', '.join(ort['would_use'])}" if ort else "not installed (pip install kedge[cpu])"),
        "TensorRT       " + (trt["version"] or f"not available ({trt['problem']})"),
        f"pycuda         {data['pycuda'] or 'not installed'}",
        f"TensorFlow     {data['tensorflow'] or 'not installed (not needed to run models)'}",
        "GPU            " + (f"{gpu['name']}, compute capability {gpu['compute_capability']}, "
                            f"{gpu['total_memory_mib']} MiB" if gpu else "none visible"),
        f"CPU            {cpu['model']}, {cpu['cores']} cores, {cpu['machine']}",
        "CPU INT8       " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["int8_features"].items()),
    ]
    click.echo("\n".join(lines))
    if model is not None:
        engines = data["engines"]
        click.echo(f"engines in {model}: " + ("none" if not engines else ""))
        for e in engines:
            click.echo(f"  {e['engine']}: " + ("runs here" if e["compatible"] else f"not here ({e['problem']})"))


register_device_commands(main)  # check-trt, golden, verify

if __name__ == "__main__":
    main()
