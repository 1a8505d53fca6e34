"""`kedge audit`: the shortcut audit of a bundle on labelled images with sources."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kedge.options import (
    BUNDLE,
    allow_unverified_option,
    backend_option,
    emit_json,
    json_option,
    open_runner,
    precision_option,
    source_options,
    source_spec,
)
from kedge.runtime.errors import KedgeError


def register(main: click.Group) -> None:
    @main.command()
    @click.argument("bundle", type=BUNDLE)
    @click.option("--data", required=True, type=click.Path(path_type=Path),
                  help="Labelled class-per-folder tree (or several side by side).")
    @click.option("--split", type=click.Choice(["train", "val", "test"]),
                  help="Only the files the bundle's split.csv put in this split.")
    @click.option("--split-manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Take --split (and sources) from this split.csv, e.g. another bundle's, to compare two "
                       "models on one held-out split.")
    @source_options
    @backend_option(extra=("keras",), help="keras: the original (needs the [train] extra).")
    @precision_option()
    @allow_unverified_option
    @click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
    @click.option("--plot", type=click.Path(path_type=Path), help="Write a per-source chart (PNG; needs matplotlib).")
    @click.option("--quiet", is_flag=True, help="No progress bar.")
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
        from kedge.runtime.bundle import load_bundle
        from kedge.runtime.envelope import bundle_envelope
        from kedge.runtime.envelope_audit import GateRecorder, envelope_section, format_section
        from kedge.runtime.evaluate import predict_items
        from kedge.runtime.explain import require_matplotlib
        from kedge.runtime.shortcut import audit as run_audit
        from kedge.runtime.shortcut import format_audit
        from kedge.runtime.sources import UNKNOWN, labelled_items

        spec = source_spec(sources)
        if plot is not None:
            require_matplotlib("kedge audit --plot")
        loaded = load_bundle(bundle)
        items = labelled_items(loaded, data, split, spec, split_manifest)
        if items and all(item.source == UNKNOWN for item in items):  # nothing to audit: say so, never "passed"
            raise KedgeError(f"{data}: no source is known for these images, so no source check is possible: give "
                             "--sources or --source-rule (or a bundle whose split.csv names them)")
        runner, description = open_runner(loaded, backend, precision, allow_unverified)
        envelope = bundle_envelope(loaded)
        gate = None if envelope is None else GateRecorder(runner, envelope)
        with runner:
            predictions = predict_items(gate or runner, items, batch_size, progress=not quiet and not as_json)
        report = run_audit(predictions, loaded.classes)
        report["envelope"] = None if gate is None else envelope_section(
            predictions, gate.checks, gate.envelope, loaded.classes, _splits(loaded, data, split_manifest))
        report.update({"bundle": str(loaded.path), "model": loaded.name, "data": str(data),
                       "split": split or "all", "backend": description})
        if plot is not None:
            from kedge.runtime.shortcut_plot import plot_audit

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


def _splits(bundle: Any, data: Path, split_manifest: Path | None) -> dict[str, str]:
    """Image path -> split, from --split-manifest or the bundle's split.csv ({} without one)."""
    from kedge.runtime.folders import read_split_manifest

    if split_manifest is None and not bundle.has("split_manifest"):
        return {}
    assigned = read_split_manifest(split_manifest) if split_manifest is not None else bundle.split
    return {str(Path(data) / relative): name for relative, name in assigned.items()}
