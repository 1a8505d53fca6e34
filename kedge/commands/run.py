"""The run stage: a model on images (infer), what drove its answers (explain), how fast
each of its pairs runs (bench), and what the model is given (preprocess)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kedge.options import (
    allow_unverified_option,
    backend_option,
    batch_size_option,
    csv_list,
    cuda_graph_option,
    emit_json,
    forms_option,
    json_option,
    load_models,
    log,
    machine,
    model_option,
    open_runner,
    out_option,
    plot_option,
    positive_ints,
    precision_option,
    quiet_option,
    threads_option,
    triton_option,
)
from kedge.runtime.errors import KedgeError


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@model_option()
@backend_option()
@precision_option()
@allow_unverified_option
@batch_size_option(8)
@threads_option
@click.option("--workers", type=click.IntRange(0, 64),
              help="Threads decoding the next files while a batch runs (default: up to 4; 0: decode inline).")
@cuda_graph_option("TensorRT: replay a captured CUDA graph for each batch size.")
@json_option("Print a JSON list: path, label, probabilities, backend, form, model (one object per image and "
             "model).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: path, model, label, one p_<class> column per class, "
              "backend, form (one row per image and model).")
@click.option("--full-decode", is_flag=True, help="Decode large JPEGs in full instead of from their DCT at 1/2-1/8 "
              "scale: slower, bit-for-bit preprocessing v1 (a borderline image can flip between the two).")
@triton_option("Run the model on a Triton server (e.g. http://gpu-host:8000) serving this bundle's model name; "
               "decoding and preprocessing stay here.", url=True)
@click.option("--audit", type=click.Path(path_type=Path),
              help="Append one JSON line per reading to this file (time, input sha256, model, form sha256, "
              "backend, precision, runtime version, answer), fsynced line by line.")
@click.option("--show-outside", is_flag=True, help="For a reading outside the model's envelope, print the "
              "probabilities too (the class stays withheld).")
@quiet_option("No progress bar and no backend line on stderr.")
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

    from kedge.runtime.infer import classify, render
    from kedge.runtime.inputs.folders import expand_inputs
    from kedge.runtime.reports.audit_trail import AuditLog

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
        served = {"url": triton_url} if triton_url else {}  # --triton URL: the triton backend, the URL its option
        readings = classify(bundles, paths, "triton" if served else backend, precision, threads, batch_size, workers,
                            {"cuda_graph": cuda_graph, **served}, allow_unverified, reduced=not full_decode,
                            audit=trail, progress=bar.update,
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
@model_option()
@backend_option(help="Comma-separated: keras and the registered backends (default: every one this machine has; "
                "keras needs TensorFlow).", listed=True)
@precision_option("Comma-separated: fp32, fp16, bf16, int8, default (OpenVINO's own choice, the baseline) "
                  "(default: all).", listed=True)
@forms_option("Only these forms, e.g. keras,onnx-fp32,onnx-int8-qdq,trt-int8.")
@click.option("--batch-sizes", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--modes", default="engine,end_to_end", show_default=True,
              help="engine: tensor in, probabilities out. end_to_end: file bytes in (decode + preprocess "
              "included).")
@click.option("--images", "image_paths", multiple=True,
              help="Files/folders whose bytes end_to_end decodes (default: a synthetic 2048 px JPEG).")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0, 100_000))
@click.option("--iterations", default=20, show_default=True, type=click.IntRange(1, 1_000_000))
@threads_option
@cuda_graph_option("TensorRT: replay captured CUDA graphs.")
@plot_option("Also write a PNG bar chart here (one per model).")
@quiet_option("No progress lines.")
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
    from kedge.runtime.reports.bench import MODES, bundle_pairs, time_preprocess
    from kedge.runtime.reports.bench_report import bench_images, bench_models, format_report, report_json

    mode_list = csv_list(modes, "--modes", MODES) or list(MODES)
    sizes = positive_ints(batch_sizes, "--batch-sizes")
    bundles = load_models(model)
    images = bench_images(image_paths)

    def pairs_for(bundle: Any) -> Any:
        return bundle_pairs(bundle, csv_list(backends, "--backend"), csv_list(precisions, "--precision"),
                            csv_list(forms, "--forms"))

    reports = bench_models(bundles, pairs_for, images, sizes, mode_list, warmup, iterations, threads, cuda_graph,
                           plot, log=None if quiet or as_json else log)
    decode = time_preprocess(images)
    if as_json:
        emit_json(report_json(reports, decode, len(images), machine()))
        return
    click.echo(format_report(reports, decode, machine(), warmup, iterations))


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@model_option()
@out_option("PNG to write (default: IMAGE's name + .<model>.explain.png in the current folder).", required=False)
@backend_option(references=True, help="keras needs TensorFlow; the others as in `kedge infer`.")
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
    from kedge.runtime.reports.explain import Explanation, explain_image, occlusion, require_matplotlib

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
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out-dir", type=click.Path(path_type=Path),
              help="Write each model input as an 8-bit 224x224 PNG here, to see what the model sees.")
@json_option("Print JSON.")
def preprocess(inputs: tuple[str, ...], out_dir: Path | None, as_json: bool) -> None:
    """Run kedge's single preprocessing step on images (files, folders, globs).

    Prints each tensor's statistics; a file that cannot be used gets one line on
    stderr and the exit status is 1, while the other files are still processed.

    \b
    Example:
      kedge preprocess knee.png scans/ --out-dir /tmp/seen
    """
    from kedge.runtime.errors import ImageError
    from kedge.runtime.inputs.folders import expand_inputs
    from kedge.runtime.inputs.inputview import ViewWriter, tensor_summary
    from kedge.runtime.inputs.preprocess import preprocess as run_preprocess

    views = None if out_dir is None else ViewWriter(out_dir)
    rows, failed = [], 0
    for path in expand_inputs(inputs):
        try:
            x = run_preprocess(path)
        except ImageError as err:
            click.echo(f"kedge: error: {err}", err=True)
            failed += 1
            continue
        row = tensor_summary(path, x)
        if views is not None:
            row["view"] = str(views.write(path, x))
        rows.append(row)
        if not as_json:
            click.echo(f"{path}: {'x'.join(map(str, x.shape))} float32, min {row['min']:.3f} "
                       f"mean {row['mean']:.3f} max {row['max']:.3f}")
    if as_json:
        emit_json(rows)
    if failed:
        sys.exit(1)


COMMANDS = [infer, explain, bench, preprocess]
