"""The `kedge` commands that run models: infer, bench, explain, parity and info.

Wiring only: each command reads its options and calls the runtime module that does
the work (runtime/infer.py, bench.py, explain.py, parity.py, info.py).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kedge.options import (
    BUNDLE,
    allow_unverified_option,
    backend_option,
    csv_list,
    echo_parity,
    emit_json,
    json_option,
    load_models,
    log,
    machine,
    model_option,
    open_runner,
    positive_ints,
    precision_option,
    threads_option,
)
from kedge.runtime.errors import KedgeError


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@model_option
@backend_option()
@precision_option()
@allow_unverified_option
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 4096))
@threads_option
@click.option("--workers", type=click.IntRange(0, 64),
              help="Threads decoding the next files while a batch runs (default: up to 4; 0: decode inline).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay a captured CUDA graph for each batch size.")
@json_option("Print a JSON list: path, label, probabilities, backend, form, model (one object per image and "
             "model).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: path, model, label, one p_<class> column per class, "
              "backend, form (one row per image and model).")
@click.option("--full-decode", is_flag=True, help="Decode large JPEGs in full instead of from their DCT at 1/2-1/8 "
              "scale: slower, bit-for-bit preprocessing v1 (a borderline image can flip between the two).")
@click.option("--triton", "triton_url", metavar="URL",
              help="Run the model on a Triton server (e.g. http://gpu-host:8000) serving this bundle's model name; "
              "decoding and preprocessing stay here.")
@click.option("--audit", type=click.Path(path_type=Path),
              help="Append one JSON line per reading to this file (time, input sha256, model, form sha256, "
              "backend, precision, runtime version, answer), fsynced line by line.")
@click.option("--show-outside", is_flag=True, help="For a reading outside the model's envelope, print the "
              "probabilities too (the class stays withheld).")
@click.option("--quiet", is_flag=True, help="No progress bar and no backend line on stderr.")
def infer(inputs: tuple[str, ...], model: Path | None, backend: str, precision: str | None, allow_unverified: bool,
          batch_size: int, threads: int | None, workers: int | None, cuda_graph: bool, as_json: bool, as_csv: bool,
          full_decode: bool, triton_url: str | None, audit: Path | None, show_outside: bool, quiet: bool) -> None:
    """Classify knee radiographs: the predicted class and every class's probability.

    INPUTS are files, folders (searched recursively; extensionless DICOMs found by
    content) and glob patterns. A file that cannot be used gets one line on stderr
    naming it and the problem; the others are still classified (--json/--csv keep
    their rows), and the exit status is 1 at the end. Each model runs on the
    fastest (backend, form) pair that passed parity for it; the pair and the reason
    are printed on stderr (and the backend and form are in every JSON/CSV row).

    Input gate: an image unlike the images a model was validated on (outside the
    bundle's envelope: a photograph, a plot, an inverted or rotated film) gets no
    class from that model ("answer withheld"); --show-outside adds its
    probabilities. JSON/CSV rows and the --audit log carry inside, the distance as a
    percentile of the validation images and the nearest validated source. Exit
    status 3 if any reading was withheld (1, for an unreadable file, comes first).
    A bundle without an envelope says once that no input check is possible.

    \b
    Examples:
      kedge infer knee.jpg --model runs/cnn
      kedge infer scans/ 'more/*.png' --model runs/cnn --csv > results.csv
      kedge infer scans/ --model runs/cnn --backend openvino --precision int8 --json
    """
    import contextlib

    from tqdm import tqdm

    from kedge.runtime.audit import AuditLog
    from kedge.runtime.folders import expand_inputs
    from kedge.runtime.infer import classify, render

    if as_json and as_csv:
        raise KedgeError("--json and --csv: choose one")
    bundles = load_models(model)
    paths = expand_inputs(inputs)
    if not paths:
        raise KedgeError(f"{' '.join(inputs)}: no images found (PNG, JPEG, BMP or TIFF)")
    bar = tqdm(total=len(paths) * len(bundles), unit="img", file=sys.stderr, leave=False,
               disable=quiet or len(paths) < 2 * batch_size or None)
    with contextlib.ExitStack() as stack:
        trail = stack.enter_context(AuditLog(audit)) if audit is not None else None
        readings = classify(bundles, paths, backend, precision, threads, batch_size, workers, cuda_graph, triton_url,
                            allow_unverified, reduced=not full_decode, audit=trail, progress=bar.update,
                            log=None if quiet else (lambda line: tqdm.write(line, file=sys.stderr)))
    bar.close()
    if quiet:  # without --quiet the model's line above already said it
        for line in readings.fallbacks:
            log(f"kedge: {line}")
    for name in readings.unchecked:
        log(f"kedge: {name}: this bundle has no input envelope, so no input check is possible: it answers for "
            "any image (fit one with `kedge envelope`)")
    for failure in readings.failures:
        log(f"kedge: error: {failure.path}: {failure.problem}")
    text = render(readings, "json" if as_json else "csv" if as_csv else "text", show_outside)
    if text:
        click.echo(text)
    if readings.failures:
        log(f"kedge: {len(readings.failures)} of {len(paths)} file(s) could not be classified")
        sys.exit(1)
    if readings.withheld:
        log(f"kedge: {readings.withheld} reading(s) withheld: the image is outside the images the model was "
            "validated on (docs/envelope.md); exit status 3")
        sys.exit(3)


@click.command()
@model_option
@click.option("--backend", "backends", help="Comma-separated: keras and the registered backends (default: every "
              "one this machine has; keras needs TensorFlow).")
@click.option("--precision", "precisions", help="Comma-separated: fp32, fp16, bf16, int8, default (OpenVINO's own "
              "choice, the baseline) (default: all).")
@click.option("--forms", help="Only these forms, e.g. keras,onnx-fp32,onnx-int8-qdq,trt-int8.")
@click.option("--batch-sizes", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--modes", default="engine,end_to_end", show_default=True,
              help="engine: tensor in, probabilities out. end_to_end: file bytes in (decode + preprocess "
              "included).")
@click.option("--images", "image_paths", multiple=True,
              help="Files/folders whose bytes end_to_end decodes (default: a synthetic 2048 px JPEG).")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0, 100_000))
@click.option("--iterations", default=20, show_default=True, type=click.IntRange(1, 1_000_000))
@threads_option
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay captured CUDA graphs.")
@click.option("--plot", type=click.Path(path_type=Path), help="Also write a PNG bar chart here (one per model).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@json_option("Print JSON per model: rows (backend, form, precision, parity, auto, batch_size, mode, mean_ms, p50_ms, "
             "p90_ms, p99_ms, throughput, ratios), auto against OpenVINO's default, preprocessing timings.")
def bench(model: Path | None, backends: str | None, precisions: str | None, forms: str | None, batch_sizes: str,
          modes: str, image_paths: tuple[str, ...], warmup: int, iterations: int, threads: int | None,
          cuda_graph: bool, plot: Path | None, quiet: bool, as_json: bool) -> None:
    """Time every (backend, form, precision) pair side by side in one run, as trtexec does.

    Without --model: both shipped models. Warm-up, then timed iterations; mean,
    p50, p90, p99 latency (ms) and throughput (images/s) per row. Each row shows its
    parity status and `*` marks the pair `kedge infer` picks by itself; `default`
    rows are OpenVINO out of the box (LATENCY hint, no precision hint), the baseline.
    `x fastest` is each row's mean over the fastest row's (same mode and batch);
    `vs keras` is Keras's mean over the row's. Also times decode + preprocess, and
    the input gate (the envelope's check, which runs beside whichever form answers).

    \b
    Examples:
      kedge bench                                            # both shipped models, batch 1
      kedge bench --model runs/cnn --backend onnxruntime,openvino --precision fp32,int8 --batch-sizes 1,8
      kedge bench --model runs/cnn --images scans/ --plot bench.png --json
    """
    from kedge.runtime.bench import (
        MODES,
        auto_vs_baseline,
        bundle_targets,
        format_rows,
        run_bench,
        time_gate,
        time_preprocess,
    )
    from kedge.runtime.bench import plot as plot_rows
    from kedge.runtime.folders import expand_inputs
    from kedge.runtime.preprocess import preprocess, read_bytes

    mode_list = csv_list(modes, "--modes", MODES) or list(MODES)
    sizes = positive_ints(batch_sizes, "--batch-sizes")
    bundles = load_models(model)
    if image_paths:
        paths = expand_inputs(image_paths)
        images = [read_bytes(p) for p in paths]
        for path, data in zip(paths, images, strict=True):
            preprocess(data, str(path))  # a bad file fails here, with its name, before any timing
    else:
        from kedge.runtime.bench import synthetic_jpeg

        images = [synthetic_jpeg()]
    reports = []
    for bundle in bundles:
        targets = bundle_targets(bundle, csv_list(backends, "--backend"), csv_list(precisions, "--precision"),
                                 csv_list(forms, "--forms"), threads, cuda_graph, _keras_target(bundle, backends))
        progress = None if quiet or as_json else (lambda what, b=bundle: log(f"{b.name}: timing {what}"))
        rows = run_bench(targets, images, sizes, mode_list, warmup, iterations, progress=progress)
        reports.append({"model": bundle.name, "rows": rows, "auto_vs_openvino_default": auto_vs_baseline(rows),
                        "input_gate": time_gate(bundle, images)})
        if plot is not None:
            chart = plot if len(bundles) == 1 else plot.with_name(f"{plot.stem}.{bundle.name}{plot.suffix}")
            plot_rows(rows, chart, f"{bundle.name}: mean latency per image")
    decode = time_preprocess(images)
    if as_json:
        emit_json({"models": [{**r, "rows": [row.as_dict() for row in r["rows"]]} for r in reports],
                   "preprocess": decode, "images": len(images), "machine": machine()})
        return
    click.echo(f"{machine()}; {warmup} warm-up + {iterations} timed iterations; * = the pair `kedge infer` picks")
    for report in reports:
        click.echo(f"\n{report['model']}")
        click.echo("\n".join(format_rows(report["rows"])))
        for c in report["auto_vs_openvino_default"]:
            click.echo(f"  {c['mode']}: auto ({c['auto']}) p50 {c['auto_p50_ms']:.2f} ms vs {c['baseline']} "
                       f"{c['baseline_p50_ms']:.2f} ms: {c['ratio']:.2f}x")
        gate = report["input_gate"]
        click.echo("  input gate (envelope, the same for every form): " + (
            f"mean {gate['mean_ms']:.2f} ms, p50 {gate['p50_ms']:.2f} ms per image, on top of the rows above"
            if gate else "none in this bundle (no input check)"))
    click.echo("\ndecode + preprocess per image (ms): " + "; ".join(
        f"{d['decode']} mean {d['mean_ms']:.2f}, p50 {d['p50_ms']:.2f}" for d in decode)
        + f"; reduced is {decode[1]['speedup']:.2f}x faster")


def _keras_target(bundle: Any, backends: str | None) -> Any:
    """Keras as a bench row where TensorFlow and the bundle's model.keras are both here."""
    from kedge.runtime.bench import Target

    wanted = backends is not None and "keras" in (csv_list(backends, "--backend") or [])
    if not bundle.has("keras"):
        if wanted:
            raise KedgeError(f"{bundle.path}: --backend keras needs the bundle's model.keras")
        return None
    from importlib.util import find_spec

    if find_spec("tf_keras") is None:
        if wanted:
            raise KedgeError("--backend keras: needs TensorFlow (the [train] extra)")
        return None
    from kedge.train.backend import open_keras

    return Target("keras", "keras", lambda: open_keras(bundle, "--backend keras"))


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@model_option
@click.option("--out", type=click.Path(path_type=Path),
              help="PNG to write (default: IMAGE's name + .<model>.explain.png in the current folder).")
@backend_option(("keras",), "keras needs TensorFlow; the others as in `kedge infer`.")
@precision_option()
@allow_unverified_option
@click.option("--method", type=click.Choice(["occlusion", "gradcam"]), default="occlusion", show_default=True,
              help="gradcam: Grad-CAM on the Keras model (needs TensorFlow; implies --backend keras).")
@click.option("--class", "class_name", help="Explain this class (default: the predicted one).")
@click.option("--patch", default=32, show_default=True, type=click.IntRange(4, 224), help="Occluding patch, pixels.")
@click.option("--stride", default=16, show_default=True, type=click.IntRange(1, 224), help="Patch step, pixels.")
@json_option("Print what was written as JSON.")
def explain(image: Path, model: Path | None, out: Path | None, backend: str, precision: str | None,
            allow_unverified: bool, method: str, class_name: str | None, patch: int, stride: int,
            as_json: bool) -> None:
    """Draw what drove a prediction: an occlusion-sensitivity map over the radiograph.

    Patches of the 224x224 input are greyed out one at a time (all masked copies run
    in batches through the same backend), and the drop in the class's probability is
    mapped: red areas raised the class, blue ones lowered it. No gradients are
    needed, so it runs on every backend. Without --model, each shipped model gets
    its own PNG.

    \b
    Examples:
      kedge explain knee.png                          # both shipped models
      kedge explain knee.png --model runs/cnn --out knee-cnn.png --patch 24 --stride 8
    """
    from kedge.runtime.explain import Explanation, explain_image, occlusion, require_matplotlib

    require_matplotlib()
    if method == "gradcam":
        backend = "keras"

    def runner_for(bundle: Any) -> tuple[Any, str]:
        return open_runner(bundle, backend, precision, allow_unverified)

    def explainer(runner: Any, x: Any, wanted: int | None) -> Explanation:
        if method == "gradcam":
            from kedge.train.gradcam import grad_cam

            heatmap, index, probability = grad_cam(runner.model, x, wanted)
            return Explanation(heatmap, index, probability, patch=0, stride=0)
        return occlusion(runner, x, wanted, patch, stride)

    written = explain_image(image, load_models(model), out, runner_for, explainer, method, class_name,
                            log=None if as_json else click.echo)
    if as_json:
        emit_json(written)


@click.command()
@click.argument("bundle", type=BUNDLE)
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Labelled class-per-folder tree.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Only this split of --data.")
@click.option("--reference", type=click.Choice(["keras", "onnx-fp32"]),
              help="Default: keras where TensorFlow and model.keras are here, else onnx-fp32.")
@click.option("--forms", help="Comma-separated forms to check (default: all this machine can run), e.g. "
              "onnx-fp16,onnx-int8,trt-int8.")
@click.option("--backend", "backends", help="Comma-separated backends to check (default: every one usable here).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 4096))
@click.option("--quiet", is_flag=True, help="No progress bars.")
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
    from kedge.runtime.bundle import load_bundle

    result = parity_for_bundle(load_bundle(bundle), data, split, reference, csv_list(forms, "--forms"), batch_size,
                               progress=not quiet, log=None if as_json else log,
                               backends=csv_list(backends, "--backend"))
    if as_json:
        emit_json({**result, "rows": [{k: row.get(k) for k in (
            "backend", "form", "precision", "accuracy", "macro_f1", "agreement", "near_ties", "max_abs_diff",
            "mean_abs_diff", "passed", "runner", "n", "reference", "problems")} for row in result["rows"]]})
    else:
        echo_parity(result)
    if not result["passed"]:
        sys.exit(1)


@click.command()
@click.option("--model", "-m", "model", type=BUNDLE, help="Also list this bundle's (backend, "
              "form, precision) pairs with their parity status, and its engines.")
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
