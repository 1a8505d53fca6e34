"""Options and helpers every `kedge` command shares, declared once.

Each option name is declared here once (tests/test_cli_lean.py checks that no command
module declares one again): a factory takes what differs between the commands that
use it (help text, default, required) and adds the option with the same name, type
and checks everywhere. The helpers print (`log` on stderr, `emit_json` on stdout) and
turn option text into values with one-line errors.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from kedge.runtime.bundle.schema import SPLITS
from kedge.runtime.errors import KedgeError

Decorator = Callable[[Any], Any]


class LazyChoice(click.Choice[str]):
    """A click.Choice whose values are read when a command parses or shows its help,
    not when it is declared: the backend registry and the table of forms import numpy
    and OpenCV, and `kedge --help` should not pay for them (a test checks)."""

    def __init__(self, values: Callable[[], Iterable[str]]) -> None:
        self._values = values
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._values())

    @choices.setter
    def choices(self, values: Iterable[str]) -> None:
        fixed = tuple(values)
        self._values = lambda: fixed


def _backend_names(references: bool) -> list[str]:
    """auto and the registered backends a user names: the checked ones, and with `references`
    the parity references too (keras). A server (triton) is reached by its own option."""
    from kedge.runtime.backends import REFERENCES, backend_class, names

    return ["auto", *(n for n in names() if (references if n in REFERENCES else  # a reference is not imported
                                               backend_class(n).checked or references and backend_class(n).reference))]


def _precisions() -> tuple[str, ...]:
    from kedge.runtime.bundle.forms import PRECISIONS

    return PRECISIONS


class BundleType(click.ParamType):
    """A bundle folder, or the name of a model shipped with kedge (resnet50-gru, knee-cnn):
    every command that takes a bundle resolves it here, once (runtime/bundle/shipped.py says how).
    An unknown one is a KedgeError, so the CLI prints one line and exits 1."""

    name = "bundle"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        from kedge.runtime.bundle.shipped import resolve_bundle

        return resolve_bundle(value)


BUNDLE = BundleType()


def _path(**checks: Any) -> click.Path:
    return click.Path(path_type=Path, **checks)


def json_option(help: str = "Print JSON.") -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=help)


def quiet_option(help: str) -> Decorator:
    return click.option("--quiet", is_flag=True, help=help)


def data_option(help: str, required: bool = False, existing_folder: bool = False) -> Decorator:
    """--data: a labelled class-per-folder tree (or several side by side)."""
    checks = {"exists": True, "file_okay": False} if existing_folder else {}
    return click.option("--data", required=required, type=_path(**checks), help=help)


def split_option(help: str, fractions: bool = False) -> Decorator:
    """--split: one of the bundle's splits, or (fractions=True: train and dataset) the
    train,val,test fractions a new split is drawn with (parse_fractions reads them)."""
    kind: dict[str, Any] = {"default": "0.7,0.15,0.15", "show_default": True} if fractions else {
        "type": click.Choice(SPLITS)}
    return click.option("--split", *(["fractions"] if fractions else []), help=help, **kind)


def out_option(help: str, required: bool = True) -> Decorator:
    return click.option("--out", required=required, type=_path(), help=help)


def overwrite_option(help: str) -> Decorator:
    return click.option("--overwrite", is_flag=True, help=help)


def seed_option(help: str | None = None) -> Decorator:
    return click.option("--seed", default=0, show_default=True, type=int, help=help)


def _default(value: Any) -> dict[str, Any]:
    """default= and show_default only when there is a default: click tells an unset default from None."""
    return {} if value is None else {"default": value, "show_default": True}


def classes_option(help: str | None = None, default: str | None = None) -> Decorator:
    return click.option("--classes", help=help, **_default(default))


def batch_size_option(default: int, most: int | None = 4096) -> Decorator:
    """--batch-size; most=None leaves it a plain integer (train, evaluate)."""
    return click.option("--batch-size", default=default, show_default=True,
                        type=int if most is None else click.IntRange(1, most))


def max_batch_option(help: str, default: int | None = None) -> Decorator:
    return click.option("--max-batch", type=click.IntRange(1, 4096), help=help, **_default(default))


def reference_option(help: str) -> Decorator:
    return click.option("--reference", type=click.Choice(["keras", "onnx-fp32"]), help=help)


def forms_option(help: str, default: str | None = None) -> Decorator:
    return click.option("--forms", help=help, **_default(default))


def plot_option(help: str) -> Decorator:
    return click.option("--plot", type=_path(), help=help)


def report_option(help: str, to_file: bool = False) -> Decorator:
    """--report: measure more and print it (a flag), or (to_file=True) also write the report to a file."""
    kind: dict[str, Any] = {"type": _path()} if to_file else {"is_flag": True}
    return click.option("--report", *(["report_path"] if to_file else []), help=help, **kind)


def triton_option(help: str, url: bool = False) -> Decorator:
    """--triton: a model repository folder to write, or (url=True) a Triton server to run on."""
    kind: dict[str, Any] = {"metavar": "URL"} if url else {"type": _path()}
    return click.option("--triton", "triton_url" if url else "triton_repo", help=help, **kind)


def model_option(help: str = "Bundle folder or shipped model name (default: $KEDGE_MODEL, else the models "
                 "shipped with kedge).", envvar: bool = True) -> Decorator:
    return click.option("--model", "-m", "model", envvar="KEDGE_MODEL" if envvar else None, type=BUNDLE, help=help)


def backend_option(references: bool = False, help: str = "", listed: bool = False) -> Decorator:
    """--backend: one backend (or auto), or with listed=True a comma-separated list (csv_list reads it).
    With `references`, the parity references (keras) are among the choices too."""
    kind: dict[str, Any] = {"help": help} if listed else {
        "type": LazyChoice(lambda: _backend_names(references)), "default": "auto", "show_default": True,
        "help": help or "auto: the fastest (backend, form) pair that passed parity for the bundle, measured once "
                        "on this machine and cached."}
    return click.option("--backend", *(["backends"] if listed else []), **kind)


def precision_option(help: str = "", listed: bool = False) -> Decorator:
    """--precision: one precision, or with listed=True a comma-separated list (csv_list reads it)."""
    kind: dict[str, Any] = {"help": help} if listed else {
        "type": LazyChoice(_precisions),
        "help": help or "Only pairs of this precision (bf16: OpenVINO on the FP32 file, where the CPU has BF16)."}
    return click.option("--precision", *(["precisions"] if listed else []), **kind)


def threads_option(f: Any) -> Any:
    return click.option("--threads", type=click.IntRange(1, 1024),
                        help="Intra-op threads for ONNX Runtime and OpenVINO (default: all cores).")(f)


def cuda_graph_option(help: str) -> Decorator:
    return click.option("--cuda-graph", is_flag=True, help=help)


def allow_unverified_option(f: Any) -> Any:
    return click.option("--allow-unverified", is_flag=True,
                        help="Run a pair named with --backend/--precision even though its parity FAILED or was "
                        "never checked (refused otherwise; auto never picks one).")(f)


def source_options(function: Any) -> Any:
    """--sources FILE (+ column names) or --source-rule: where each image came from."""
    for option in reversed((
        click.option("--sources", "sources_file", type=_path(),
                     help="CSV naming each image's source (collection, site, scanner), paths relative to --data, "
                          "e.g. ../shared/data/manifest.csv."),
        click.option("--path-column", default="path", show_default=True, help="--sources column with the path."),
        click.option("--source-column", default="source", show_default=True,
                     help="--sources column with the source (e.g. collection)."),
        click.option("--source-rule", help="Without a file: folder (first folder under --data), format, "
                                           "regex:PATTERN (first group), or dicom:Manufacturer,InstitutionName "
                                           "(hashed, never printed)."),
    )):
        function = option(function)
    return function


def source_spec(options: dict[str, Any]) -> Any:
    """Pop the source_options values from a command's kwargs into a SourceSpec."""
    from kedge.runtime.inputs.sources import make_spec

    return make_spec(options.pop("sources_file"), options.pop("source_rule"), options.pop("path_column"),
                     options.pop("source_column"))


def log(message: str) -> None:
    click.echo(message, err=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def finish(result: Any, as_json: bool) -> None:
    """Print an export, check-trt or verify result (lines or JSON); exit 1 when it did not pass."""
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo("\n".join(result.lines()))
    if not result.passed:
        sys.exit(1)


def load_models(model: Path | None) -> list[Any]:
    """--model (or $KEDGE_MODEL) when given, else every model shipped with kedge."""
    from kedge.runtime.bundle.manifest import load_bundle
    from kedge.runtime.bundle.shipped import shipped_bundles

    if model is not None:
        return [load_bundle(model)]
    shipped = shipped_bundles()
    if not shipped:
        raise KedgeError("no model: pass --model BUNDLE (a folder made by `kedge train`) or set KEDGE_MODEL")
    return [load_bundle(path) for path in shipped]


def csv_list(text: str | None, option: str, allowed: tuple[str, ...] | None = None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if not items or bad:
        raise KedgeError(f"{option} {text!r}: choose from {', '.join(allowed or ())}")
    return items


def positive_int(text: str, option: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise KedgeError(f"{option} {text!r}: give a positive number or 'all'")
    return value


def positive_ints(text: str, option: str) -> list[int]:
    values = [positive_int(t.strip(), option) for t in text.split(",") if t.strip()]
    if not values:
        raise KedgeError(f"{option} {text!r}: give positive numbers, e.g. 1,8")
    return values


def parse_fractions(text: str) -> tuple[float, float, float]:
    """split_option(fractions=True)'s value: three positive fractions that sum to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0 or abs(sum(parts) - 1) > 1e-6:
        raise KedgeError(f"--split {text!r}: give three positive fractions that sum to 1, e.g. 0.7,0.15,0.15")
    return parts


def machine() -> str:
    from kedge.runtime.cpu import cpu_info
    from kedge.runtime.info import gpu_info

    cpu = cpu_info()
    gpu = gpu_info()
    return f"{cpu['model']} ({cpu['cores']} cores)" + (f", {gpu['name']}" if gpu else ", no GPU")


def open_runner(bundle: Any, backend: str, precision: str | None, allow_unverified: bool) -> tuple[Any, str]:
    """The bundle on the chosen (backend, form, precision) (--backend keras: its Keras original,
    a registered backend like the others), as (context-managed runner, what it is)."""
    from kedge.runtime.checks.choice import choose

    runner = choose(bundle, backend, precision, allow_unverified).pair.open(bundle)
    return runner, runner.label
