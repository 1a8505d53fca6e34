"""`kedge envelope`: fit a bundle's input envelope, store it, and measure it.

Wiring only: the work is in runtime/envelope_fit.py and runtime/envelope_report.py.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kedge.options import BUNDLE, csv_list, emit_json, json_option, log, machine, source_options, source_spec


def register(main: click.Group) -> None:
    @main.command()
    @click.argument("bundle", type=BUNDLE)
    @click.option("--data", required=True, type=click.Path(path_type=Path),
                  help="The labelled folder the model was trained on (paths in the bundle's split.csv are "
                       "relative to it), e.g. ../shared/data.")
    @source_options
    @click.option("--validated", help="Comma-separated sources to describe, e.g. B,C (default: those whose "
                  "per-source test balanced accuracy has a 95 % Wilson lower bound above chance, from kedge.json). "
                  "Recorded in the envelope.")
    @click.option("--components", default=20, show_default=True, type=click.IntRange(1, 200),
                  help="Principal components kept.")
    @click.option("--keep", default=0.95, show_default=True, type=float,
                  help="Share of the validated sources' validation images the threshold keeps inside.")
    @click.option("--report", is_flag=True, help="Also measure it: the validated sources' test images as is, "
                  "inverted, rotated 90 degrees and corner-cropped; non-radiographs; unvalidated sources; "
                  "synthetic knees. Exit status 2 if a target is not met.")
    @click.option("--synthetic", default=30, show_default=True, type=click.IntRange(0, 10_000),
                  help="With --report: how many `kedge synth` knees to check (report only).")
    @click.option("--dry-run", is_flag=True, help="Fit (and --report) without writing anything to the bundle.")
    @click.option("--quiet", is_flag=True, help="No progress bars.")
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
        from kedge.runtime.envelope_fit import fit_and_store

        chosen = csv_list(validated, "--validated")
        fitted, samples, summary = fit_and_store(bundle, data, source_spec(sources), chosen, components, keep,
                                                 write=not dry_run, progress=not quiet and not as_json,
                                                 log=None if as_json else log)
        result: dict[str, Any] = {**summary}
        if report:
            from kedge.runtime.envelope_report import stress_report

            result["report"] = stress_report(fitted, samples, synthetic, progress=not quiet and not as_json)
            result["machine"] = machine()
        if as_json:
            emit_json(result)
        else:
            click.echo(_format(result))
        if report and not result["report"]["targets_met"]:
            sys.exit(2)


def _format(result: dict[str, Any]) -> str:
    from kedge.runtime.envelope_report import format_report

    fitted, threshold = result["fitted_on"], result["thresholded_on"]
    lines = [f"{result['model']}: envelope on {', '.join(result['validated'])} ({result['validated_by']}); "
             f"{result['components']} components, fitted on {fitted['n']} train images, threshold "
             f"{result['threshold']:.3f} keeps {result['keep']:.0%} of {threshold['n']} validation images"
             + ("" if result["written"] else " (dry run: nothing written)")]
    for source, row in result["held_out"].items():
        lines.append(f"  held out: source {source} ({'validated' if row['validated'] else 'unvalidated'}, "
                     f"{row['splits']}): {row['outside']} of {row['n']} outside ({row['outside_share']:.0%})")
    if "report" in result:
        lines.append(format_report(result["report"], f"measured on {result['machine']}:"))
    return "\n".join(lines)
