"""The lean side: no TensorFlow on the runtime path, and one-line errors from the CLI."""
from __future__ import annotations

import collections
import configparser
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import BLOCK_TF, REPO


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


# Imports every module of kedge.runtime, sub-packages included (walk_packages, not a list).
IMPORT_RUNTIME = ("import importlib, pkgutil, kedge.runtime\n"
                  "for m in pkgutil.walk_packages(kedge.runtime.__path__, 'kedge.runtime.'):\n"
                  "    importlib.import_module(m.name)\n")


def test_runtime_never_imports_tensorflow() -> None:
    # TensorFlow made unimportable: every runtime module, the CLI and the synthetic generator still load and run.
    code = BLOCK_TF + IMPORT_RUNTIME + (
        "import cv2, numpy as np, kedge.cli, kedge.runtime.checks.synthetic\n"
        "from kedge.runtime.inputs.preprocess import preprocess\n"
        "print(preprocess(cv2.imencode('.png', np.zeros((9, 9), np.uint8))[1].tobytes()).shape)"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert "(224, 224, 3)" in result.stdout


def test_runtime_loads_neither_train_export_nor_tensorflow() -> None:
    """runtime/__init__.py promises the device side never pulls in kedge.train, kedge.export or
    TensorFlow. Nothing is blocked here: after importing every runtime module, none is loaded."""
    code = IMPORT_RUNTIME + (
        "import sys\n"
        "import kedge.cli\n"  # the CLI's modules too: their heavy imports live inside the commands
        "from kedge.runtime.backends import runnable_pairs\n"  # listing pairs imports no reference (keras)
        "from kedge.runtime.bundle.shipped import shipped_bundles\n"
        "from kedge.runtime.bundle.manifest import load_bundle\n"
        "[runnable_pairs(load_bundle(b)) for b in shipped_bundles()]\n"
        "from kedge.runtime.info import collect\n"  # kedge info reports every backend but the references
        "from kedge.runtime.reports.bench import bundle_pairs\n"  # kedge bench times Keras only when named
        "collect(); [bundle_pairs(load_bundle(b), backends=['onnxruntime']) for b in shipped_bundles()]\n"
        "banned = ('kedge.train', 'kedge.export', 'tensorflow', 'tf_keras', 'keras')\n"
        "print('modules:', len([m for m in sys.modules if m.startswith('kedge.runtime.')]))\n"
        "print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in banned or m.startswith(banned)))"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    modules, loaded = result.stdout.splitlines()[-2:]
    assert int(modules.split()[1]) >= 30, modules  # the walk really reached the runtime
    assert loaded == "loaded: []"


def test_help_without_tensorflow() -> None:
    result = python(BLOCK_TF + "from kedge.cli import main; main(['--help'])")
    assert "train" in result.stdout and "evaluate" in result.stdout, result.stderr


def test_top_level_help_loads_neither_numpy_nor_opencv() -> None:
    """`kedge --help` is the first thing a newcomer runs: it lists commands and must not pay
    for numpy and OpenCV (about a second), which only the commands themselves need."""
    code = ("import sys\nfrom kedge.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('loaded:', sorted(m for m in ('numpy', 'cv2', 'tqdm') if m in sys.modules))")
    result = python(code)
    assert "Commands:" in result.stdout, result.stderr
    assert result.stdout.splitlines()[-1] == "loaded: []"


def test_command_help_loads_neither_numpy_nor_opencv() -> None:
    """`kedge COMMAND --help` stays as cheap as `kedge --help` for every command whose options
    list no backend or precision choices (those read the backend registry, which needs numpy)."""
    code = ("import sys\nfrom kedge.cli import main\nfrom kedge.options import LazyChoice\n"
            "cheap = [name for name, command in sorted(main.commands.items())\n"
            "         if not any(isinstance(p.type, LazyChoice) for p in command.params)]\n"
            "for name in cheap:\n    try:\n        main([name, '--help'])\n    except SystemExit:\n        pass\n"
            "print('commands:', len(cheap))\n"
            "print('loaded:', sorted(m for m in ('numpy', 'cv2', 'tqdm') if m in sys.modules))")
    result = python(code)
    assert result.returncode == 0, result.stderr
    commands, loaded = result.stdout.splitlines()[-2:]
    assert int(commands.split()[1]) >= 15, commands  # all but the few with --backend/--precision
    assert loaded == "loaded: []"


def test_shared_options_are_declared_once() -> None:
    """kedge/options.py declares every option two commands share, and no option name is
    declared twice anywhere in the CLI: --json has one declaration, not one per command."""
    from kedge.cli import main

    files = [REPO / "kedge" / "options.py", *sorted((REPO / "kedge" / "commands").glob("*.py"))]
    declared = collections.Counter(name for path in files
                                   for name in re.findall(r'option\(\s*"(--[\w-]+)', path.read_text()))
    assert [name for name, count in declared.items() if count > 1] == []
    used = collections.Counter(opt for command in main.commands.values() for param in command.params
                               for opt in dict.fromkeys(param.opts) if opt.startswith("--"))
    options_py = (REPO / "kedge" / "options.py").read_text()
    shared = sorted(name for name, count in used.items() if count > 1)
    assert "--json" in shared and "--quiet" in shared
    assert [name for name in shared if f'"{name}"' not in options_py] == []


def test_every_package_folder_is_installed() -> None:
    # setup.cfg lists packages by hand (the top-level folders map into kedge.*): a new
    # sub-package left out installs fine in editable mode and breaks a real install.
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    declared = set(config["options"]["packages"].split())
    mapping = {"kedge": "kedge", "runtime": "kedge.runtime", "train": "kedge.train", "export": "kedge.export",
               "calibration": "kedge.calibration"}
    found = {".".join([mapping[init.relative_to(REPO).parts[0]], *init.relative_to(REPO).parts[1:-1]])
             for top in mapping for init in (REPO / top).rglob("__init__.py")}
    assert found == declared


def test_base_install_has_no_tensorflow() -> None:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    base = config["options"]["install_requires"].lower()
    assert "tensorflow" not in base and "keras" not in base
    assert "tensorflow" in config["options.extras_require"]["train"]


@pytest.mark.parametrize("args,message", [
    (["evaluate", "{tmp}/nope", "--data", "{tmp}"], "no such bundle folder or shipped model '{tmp}/nope' (shipped: "),
    (["train", "knee-cnn", "--data", "{tmp}/none", "--out", "{tmp}/o", "--split", "0.5,0.5"],
     "--split '0.5,0.5': give three positive fractions"),
    (["synth", "--out", "{tmp}/s", "--classes", "Normal"], "--classes 'Normal': need at least two classes"),
    (["export", "{tmp}", "--split", "test"], "--split test needs --data DIR"),
    (["export", "{tmp}", "--calib-split", "train"], "--calib-split train needs --calib DIR"),
])
def test_errors_are_one_line_without_traceback(tmp_path, args, message) -> None:
    argv = [a.format(tmp=tmp_path) for a in args]
    result = subprocess.run([sys.executable, "-m", "kedge.cli", *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.startswith(f"kedge: error: {message.format(tmp=tmp_path)}")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.tensorflow
def test_train_bad_data_folder_is_one_line(tmp_path) -> None:
    pytest.importorskip("tf_keras")
    result = subprocess.run([sys.executable, "-m", "kedge.cli", "train", "knee-cnn", "--data", str(tmp_path / "no"),
                             "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"kedge: error: {tmp_path / 'no'}: no such data folder"  # before TF loads
    assert not (tmp_path / "o").exists()


def kedge_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kedge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_preprocess_command_reports_each_bad_file_and_goes_on(tmp_path) -> None:
    import cv2

    from imagegen import encode, pattern

    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "good.png").write_bytes(encode(pattern(300, 280), ".png"))
    (tmp_path / "in" / "z").mkdir()
    (tmp_path / "in" / "z" / "good.png").write_bytes(encode(pattern(200, 200), ".png"))  # same name, other folder
    (tmp_path / "in" / "bad.jpg").write_text("not a jpeg")
    result = kedge_cli("preprocess", tmp_path / "in", tmp_path / "gone.png", "--out-dir", tmp_path / "seen", "--json")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"kedge: error: {tmp_path / 'in' / 'bad.jpg'}: not an image kedge can read "
                                          "(expected PNG, JPEG, BMP, TIFF or DICOM)",
                                          f"kedge: error: {tmp_path / 'gone.png'}: file not found"]
    rows = __import__("json").loads(result.stdout)
    inputs = tmp_path / "in"
    assert [r["path"] for r in rows] == [str(inputs / "sub" / "good.png"), str(inputs / "z" / "good.png")]
    assert [r["view"] for r in rows] == [str(tmp_path / "seen" / "good.png"), str(tmp_path / "seen" / "good-2.png")]
    view = cv2.imread(rows[0]["view"], cv2.IMREAD_UNCHANGED)
    assert view.shape == (224, 224) and view.dtype.name == "uint8"


def test_dataset_command(synthetic_data, tmp_path) -> None:
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    shutil.copy(data / "Normal" / "normal-0001.png", data / "Osteopenia" / "copy.png")
    result = kedge_cli("dataset", data, "--json", "--write-split", tmp_path / "split.csv")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["groups"] == 180 and summary["excluded"] == {"conflicting labels": 2}  # 181 files
    assert sum(sum(c.values()) for c in summary["counts"].values()) == 179
    assert (tmp_path / "split.csv").read_text().startswith("path,class,source,split,group,sha256,note")
    (data / "Normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert kedge_cli("dataset", data).returncode == 1


def test_expand_inputs_files_folders_globs(tmp_path) -> None:
    from kedge.runtime.inputs.folders import expand_inputs

    for name in ("a/1.png", "a/b/2.JPG", "a/notes.txt", "c.bmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = expand_inputs([tmp_path / "a", str(tmp_path / "*.bmp"), tmp_path / "c.bmp", tmp_path / "none.png"])
    assert found == [tmp_path / "a/1.png", tmp_path / "a/b/2.JPG", tmp_path / "c.bmp", tmp_path / "none.png"]


def test_train_refuses_existing_out_before_loading_tensorflow(synthetic_data, tmp_path) -> None:
    (tmp_path / "taken").mkdir()
    result = kedge_cli("train", "knee-cnn", "--data", synthetic_data, "--out", tmp_path / "taken", "--quiet")
    assert result.returncode == 1
    assert result.stderr.strip() == f"kedge: error: {tmp_path / 'taken'}: already exists " \
                                    "(choose another --out, or pass --overwrite)"


# A lean install, as far as imports go: TensorFlow, onnx and onnxconverter-common unimportable.
BLOCK_EXPORT = BLOCK_TF + "[sys.modules.__setitem__(m, None) for m in ('tf2onnx', 'onnx', 'onnxconverter_common')]; "


def kedge_lean(*args: str) -> subprocess.CompletedProcess:
    return python(BLOCK_EXPORT + f"from kedge.cli import main; main({list(args)!r})")


@pytest.mark.parametrize("flags,needs", [(["--fp16"], "--fp16 needs onnx, onnxconverter-common"),
                                         (["--int8", "--calib", "{calib}"], "--int8 needs onnx")])
def test_lean_export_steps_say_which_extra_they_need(tmp_path, synthetic_data, flags, needs) -> None:
    from leanbundle import make_lean_bundle

    bundle = make_lean_bundle(tmp_path / "b", synthetic_data, int8=False)
    result = kedge_lean("export", str(bundle), *(f.format(calib=synthetic_data) for f in flags))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"kedge: error: {needs}: pip install 'kedge[export]'"]


def test_documented_jetson_command_runs_until_tensorrt_is_needed(tmp_path, synthetic_data) -> None:
    """docs/device.md and `export --help`: `kedge export BUNDLE --engine --int8 --workspace 1024` on a
    bundle as shipped (Q/DQ and CPU INT8 ONNX, no FP32 ONNX, no Keras), with no TensorFlow and
    no --calib, gets as far as the engine step, which says TensorRT is needed."""
    from leanbundle import make_lean_bundle

    from kedge.cli import main
    from kedge.runtime.bundle.manifest import load_bundle, new_bundle

    bundle = make_lean_bundle(tmp_path / "b", synthetic_data, int8=False)
    made = CliRunner().invoke(main, ["export", str(bundle), "--int8", "--calib", str(synthetic_data),
                                     "--calib-size", "30", "--quiet"])
    assert made.exit_code == 0, made.output
    manifest = load_bundle(bundle).manifest
    (bundle / "model.onnx").unlink()  # shipped bundles hold no FP32 ONNX
    artifacts = {k: v for k, v in manifest["artifacts"].items() if k != "onnx_fp32"}
    new_bundle(bundle, {**{k: v for k, v in manifest.items() if k not in ("files", "schema")},
                            "artifacts": artifacts})
    assert "kedge export BUNDLE --engine --int8 --workspace 1024" in (REPO / "docs" / "device.md").read_text()
    result = kedge_lean("export", str(bundle), "--engine", "--int8", "--workspace", "1024")
    assert "Traceback" not in result.stderr and "error" not in result.stderr, result.stderr
    assert result.returncode == 0
    assert "skipped  engines: TensorRT is not installed; build them on the device that will run them" \
        in result.stdout.splitlines()


def test_models_lists_counts_without_tensorflow() -> None:
    import json

    result = python(BLOCK_TF + "from kedge.cli import main; main(['models', '--json'])")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["knee-cnn"]["parameters"]["total"] == 15_610_499  # tests/test_models.py checks the built models
    assert rows["resnet50-gru"]["parameters"]["total"] == 24_424_322


def test_explain_checks_matplotlib_before_anything_else(tmp_path) -> None:
    result = python("import sys; sys.modules['matplotlib'] = None; from kedge.cli import main; "
                    f"main(['explain', {str(tmp_path / 'missing.png')!r}])")
    assert result.returncode == 1  # the image does not exist either: matplotlib is reported first
    assert result.stderr.splitlines() == ["kedge: error: kedge explain needs matplotlib to draw: "
                                          "pip install 'kedge[explain]'"]


def _one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.splitlines() == [f"kedge: error: {message}"]


def test_preprocess_out_dir_that_is_a_file_is_one_line(tmp_path) -> None:
    from imagegen import encode, pattern

    (tmp_path / "knee.png").write_bytes(encode(pattern(64, 64), ".png"))
    (tmp_path / "taken").write_text("a file")
    result = kedge_cli("preprocess", tmp_path / "knee.png", "--out-dir", tmp_path / "taken")
    _one_error_line(result, f"{tmp_path / 'taken'}: --out-dir exists and is not a folder")
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_bundle_given_as_images_is_refused(tmp_path, synthetic_data) -> None:
    pytest.importorskip("onnx", reason="the lean test bundle is built with onnx")
    from leanbundle import make_lean_bundle

    from imagegen import encode, pattern

    bundle = make_lean_bundle(tmp_path / "tiny", synthetic_data, int8=False)
    (bundle / "curves.png").write_bytes(encode(pattern(64, 64), ".png"))  # a training plot, as `kedge train` writes
    result = kedge_cli("infer", bundle, "--model", bundle, "--precision", "fp32")
    _one_error_line(result, f"{bundle}: a model bundle, not a folder of images (pass it as --model {bundle})")


def test_audit_without_any_source_says_no_check_was_possible(tmp_path, synthetic_data) -> None:
    pytest.importorskip("onnx", reason="the lean test bundle is built with onnx")
    from leanbundle import make_lean_bundle

    bundle = make_lean_bundle(tmp_path / "tiny", synthetic_data, int8=False)
    result = kedge_cli("audit", bundle, "--data", synthetic_data, "--precision", "fp32", "--quiet")
    _one_error_line(result, f"{synthetic_data}: no source is known for these images, so no source check is "
                            "possible: give --sources or --source-rule (or a bundle whose split.csv names them)")


def test_verify_that_could_check_nothing_does_not_pass() -> None:
    from kedge.export.verify import FAILED, NOT_CHECKABLE, PASSED, VerifyReport

    report = VerifyReport("b", {})
    report.add("golden set", NOT_CHECKABLE, "no golden set")
    assert not report.passed and report.verdict == "NOTHING CHECKABLE HERE (none failed)"
    report.add("parity", PASSED, "ok")
    assert report.passed and report.verdict == "PASSED"
    report.add("engine", FAILED, "no")
    assert not report.passed and report.verdict == "FAILED"


def test_the_parity_hint_is_given_once(tmp_path, synthetic_data) -> None:
    pytest.importorskip("onnx", reason="the lean test bundle is built with onnx")
    from leanbundle import make_lean_bundle

    bundle = make_lean_bundle(tmp_path / "tiny", synthetic_data, int8=False, parity=False)
    result = kedge_cli("infer", synthetic_data / "Normal", "--model", bundle)
    assert result.returncode == 1 and "no (backend, form) pair passed parity" in result.stderr, result.stderr
    assert result.stderr.count("kedge parity") == 1, result.stderr


def test_every_command_has_an_example_in_its_help() -> None:
    from kedge.cli import main

    missing = [name for name in main.commands
               if "Example" not in CliRunner().invoke(main, [name, "--help"]).output]
    assert not missing, missing


def test_the_first_commands_in_kedge_help_work_on_a_lean_install(tmp_path) -> None:
    """The 'Right away' block of `kedge --help`, run as written with TensorFlow and
    matplotlib unimportable (a lean install), on a knee.png and a scans/ folder."""
    import shlex

    import numpy as np

    from imagegen import encode
    from kedge.cli import main
    from kedge.runtime.checks.synthetic import knee_radiograph

    (tmp_path / "scans").mkdir()  # knees (synthetic), so the shipped models' input envelopes let them through
    rng = np.random.default_rng(0)
    (tmp_path / "knee.png").write_bytes(encode(knee_radiograph(0.6, rng, 300), ".png"))
    (tmp_path / "scans" / "other.png").write_bytes(encode(knee_radiograph(0.3, rng, 256), ".png"))
    text = CliRunner().invoke(main, ["--help"]).output
    lines = text.split("Right away", 1)[1].splitlines()
    block = lines[:next(i for i, line in enumerate(lines) if not line.strip(" \b"))]  # up to the first blank line
    commands = [shlex.split(line.split("#")[0])[1:] for line in block if line.strip().startswith("kedge ")]
    assert len(commands) >= 2, block
    lean = BLOCK_TF.replace("'keras')", "'keras', 'matplotlib')")
    for argv in commands:
        result = subprocess.run([sys.executable, "-c", lean + "from kedge.cli import main; main()", *argv],
                                capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 0, f"kedge {' '.join(argv)}: {result.stderr[-1500:]}"
