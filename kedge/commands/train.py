"""The training stage: the architectures, a labelled folder checked and split, synthetic
knees, training, scoring the Keras model, and rebuilding a shipped model."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kedge.options import (
    BUNDLE,
    batch_size_option,
    classes_option,
    data_option,
    emit_json,
    json_option,
    log,
    out_option,
    overwrite_option,
    parse_fractions,
    quiet_option,
    seed_option,
    source_options,
    source_spec,
    split_option,
)
from kedge.runtime.errors import KedgeError


@click.command()
@json_option("Print JSON instead of a table.")
def models(as_json: bool) -> None:
    """List the architectures with classes, input shape and parameter counts.

    The counts are those of the full-size models (checked against the built models
    in the test suite), so this needs no TensorFlow.

    \b
    Examples:
      kedge models
      kedge models --json
    """
    from kedge.train.models import architecture_rows, format_architectures

    rows = architecture_rows()
    if as_json:
        emit_json(rows)
        return
    click.echo(format_architectures(rows))


@click.command()
@click.argument("model", type=click.Choice(["resnet50-gru", "knee-cnn"]))
@data_option("Class-per-folder image tree (e.g. DIR/Normal, DIR/Osteoporosis).", required=True)
@out_option("Bundle folder to create.")
@classes_option("Comma-separated classes (default: the model's). Folder names match case-insensitively.")
@click.option("--epochs", type=int, help="Default: the paper's (100 for resnet50-gru, 30 for knee-cnn).")
@batch_size_option(16, most=None)
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Adam learning rate.")
@seed_option("Seeds the split, augmentation and weights.")
@click.option("--patience", default=10, show_default=True, type=int,
              help="Stop after this many epochs without a better --select score on validation (0: never).")
@split_option("Train,val,test fractions; whole duplicate groups stay in one split.", fractions=True)
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
@overwrite_option("Replace --out if it exists (only once the new bundle is complete).")
@quiet_option("No progress bars or per-epoch lines.")
@json_option("Print the bundle manifest as JSON at the end.")
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
    from kedge.runtime.inputs.folders import parse_classes
    from kedge.train.fit import TrainSettings
    from kedge.train.fit import train as run_training
    from kedge.train.models import get_architecture

    given = {"weights": weights, "freeze_backbone": freeze_backbone, "gru_units": gru_units, "width": width,
             "dropout": dropout, "bn_momentum": bn_momentum}
    options = {key: value for key, value in given.items() if value is not None}
    wrong = sorted(set(options) - set(get_architecture(model).options))
    if wrong:
        raise KedgeError(f"{model} has no option {', '.join('--' + w.replace('_', '-') for w in wrong)}")
    sources = source_spec(settings)
    manifest = run_training(TrainSettings(
        model=model, data=data, out=out, classes=parse_classes(classes) if classes else None,
        fractions=parse_fractions(fractions), augment=not no_augment, source_augment=not no_source_augment,
        sources=sources, model_options=options, score_test=not search_run,
        progress=not quiet, **settings), log=log)
    if as_json:
        emit_json(manifest)


@click.command()
@click.argument("bundle", type=BUNDLE)
@data_option("Labelled class-per-folder tree.", required=True)
@split_option("Only the files the bundle's split manifest put in this split.")
@source_options
@batch_size_option(32, most=None)
@quiet_option("No progress bar.")
@json_option("Print JSON.")
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
    from kedge.runtime.reports.evaluate import format_report
    from kedge.train.evaluate import evaluate_bundle

    report = evaluate_bundle(bundle, data, split, batch_size, progress=not quiet, sources=source_spec(sources))
    if as_json:
        emit_json(report)
    else:
        click.echo(format_report(report, f"{report['model']} on {data} ({report['split']}), backend keras"))
    if report["failures"]:
        sys.exit(1)


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@classes_option("Comma-separated classes; folder names match case-insensitively.",
                default="Normal,Osteopenia,Osteoporosis")
@split_option("Train,val,test fractions.", fractions=True)
@seed_option()
@click.option("--write-split", type=click.Path(path_type=Path), help="Also write the split manifest (CSV) here.")
@source_options
@json_option("Print JSON.")
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
    from kedge.runtime.inputs.folders import parse_classes
    from kedge.train.data import dataset_report, format_dataset_report, prepare, write_split_manifest

    prepared = prepare(data, parse_classes(classes), parse_fractions(fractions), seed, progress=not as_json,
                       sources=source_spec(sources))
    report = dataset_report(prepared)
    if write_split is not None:
        write_split_manifest(write_split, prepared)
    if as_json:
        emit_json(report)
    else:
        click.echo(format_dataset_report(prepared, report))
    if any(row["reason"].startswith("unreadable") for row in report["excluded_files"]):
        sys.exit(1)


@click.command()
@out_option("Folder to create.")
@click.option("--per-class", default=60, show_default=True, type=click.IntRange(1, 100_000))
@classes_option(default="Normal,Osteopenia,Osteoporosis")
@click.option("--size", default=224, show_default=True, type=click.IntRange(32, 4096), help="Image side, pixels.")
@seed_option()
@overwrite_option("Replace --out if it exists.")
def synth(out: Path, per_class: int, classes: str, size: int, seed: int, overwrite: bool) -> None:
    """Write synthetic knee radiographs (PNG, class-per-folder) for trials and tests.

    Bone texture density follows the class, so a small model learns it quickly.
    No real patient data is involved.

    \b
    Examples:
      kedge synth --out runs/synthetic-knees
      kedge synth --out runs/big --per-class 200 --size 512 --classes Normal,Osteoporosis
    """
    from kedge.runtime.checks.synthetic import write_dataset
    from kedge.runtime.inputs.folders import parse_classes

    paths = write_dataset(out, parse_classes(classes), per_class, seed, size, overwrite)
    log(f"wrote {len(paths)} synthetic images to {out}")


@click.command()
@click.argument("model", type=click.Choice(["knee-cnn", "resnet50-gru"]))
@data_option("The real radiographs with their manifest.csv (../shared/data).", required=True, existing_folder=True)
@click.option("--work", type=click.Path(path_type=Path), help="The full training bundle (default: runs/MODEL).")
@out_option("Where the shipped copy goes (default: runtime/models/MODEL, replaced only once the new one is "
            "complete).", required=False)
@click.option("--skip-training", is_flag=True, help="Continue from the trained bundle in --work (export onwards).")
def rebuild(model: str, data: Path, work: Path | None, out: Path | None, skip_training: bool) -> None:
    """Rebuild a shipped MODEL from the real radiographs, exactly as it was made: train
    (deterministic), export the FP16 float form and, where the recipe ships them, both 7-bit INT8 forms, with
    the parity gate on the test split and the golden set, fit the input envelope, ship. Each step is
    the kedge command printed before it runs; all of them, with their seeds, go into the
    shipped kedge.json (`rebuild`). Takes hours on a 2-core CPU; stops at the first step
    that fails, keeping --work.

    \b
    Examples:
      kedge rebuild knee-cnn --data ../shared/data
      kedge rebuild resnet50-gru --data ../shared/data --work runs/gru --out /tmp/gru
    """
    from kedge.train.rebuild import rebuild as run_rebuild

    run_rebuild(model, data, work or Path("runs") / model, out or Path("runtime/models") / model, log,
                skip_training=skip_training)


COMMANDS = [models, dataset, synth, train, evaluate, rebuild]
