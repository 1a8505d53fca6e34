"""Shipped models are reachable by name: every command that takes a bundle also takes
`resnet50-gru` or `knee-cnn`, resolved through the installed package (not the current
folder), and `kedge card` / `kedge info` say where the shipped models are."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kedge.cli import main
from kedge.options import BUNDLE

# Every command that reads a bundle, and the parameter it reads it from.
BUNDLE_PARAMETERS = {"verify": "bundle", "info": "model", "audit": "bundle", "parity": "bundle", "card": "bundles",
                     "bench": "model", "infer": "model", "golden": "bundle", "check-trt": "bundle",
                     "explain": "model", "evaluate": "bundle", "ship": "bundle", "export": "bundle",
                     "serve": "bundles"}


def installed(name: str) -> Path:
    """A shipped model's folder as the installed package has it, found without kedge's own code."""
    spec = importlib.util.find_spec("kedge.runtime")
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))).resolve() / "models" / name
    if not (folder / "kedge.json").is_file():
        pytest.skip(f"no shipped {name} in this installation")
    return folder


def kedge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kedge.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_every_bundle_parameter_takes_a_name() -> None:
    found = {name: param.name for name, command in main.commands.items() for param in command.params
             if isinstance(param.type, type(BUNDLE))}
    assert BUNDLE_PARAMETERS.items() <= found.items()  # (a command added later may take one too)
    # and no other parameter named like a bundle is left as a plain path
    plain = [(name, p.name) for name, command in main.commands.items() for p in command.params
             if p.name in ("bundle", "bundles", "model") and isinstance(p.type, click.Path)]
    assert plain == []


def test_card_and_info_name_the_installed_location() -> None:
    folder = installed("knee-cnn")
    card = CliRunner().invoke(main, ["card", "knee-cnn"])
    assert card.exit_code == 0, card.output
    assert f"  location       {folder}\n" in card.stdout
    card_json = CliRunner().invoke(main, ["card", "knee-cnn", "--json"])
    assert json.loads(card_json.stdout)[0]["location"] == str(folder)
    everything = CliRunner().invoke(main, ["card"])  # no argument: every shipped model, each with its place
    assert f"location       {folder}" in everything.stdout
    info = CliRunner().invoke(main, ["info", "--model", "knee-cnn", "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    assert data["bundle"] == str(folder) and data["pairs"]
    assert {"name": "knee-cnn", "location": str(folder)} in data["shipped_models"]
    text = CliRunner().invoke(main, ["info"]).stdout
    assert f"knee-cnn in {folder}" in text.splitlines()[-1]


def test_verify_and_audit_take_a_name(tmp_path) -> None:
    from kedge.runtime.checks.synthetic import write_dataset

    folder = installed("knee-cnn")
    verify = CliRunner().invoke(main, ["verify", "knee-cnn", "--no-build", "--bench-iterations", "0", "--json"])
    assert "no such bundle" not in verify.output
    assert json.loads(verify.stdout)["bundle"] == str(folder)
    data = tmp_path / "knees"
    write_dataset(data, per_class=4, seed=0)
    audit = CliRunner().invoke(main, ["audit", "knee-cnn", "--data", str(data), "--source-rule", "folder",
                                      "--backend", "onnxruntime",
                                      "--precision", "int8", "--allow-unverified", "--quiet", "--json"])
    assert "no such bundle" not in audit.output
    report = json.loads(audit.stdout)
    assert report["bundle"] == str(folder) and report["n"] == 12


@pytest.mark.parametrize("args", [["verify", "nope"], ["card", "nope"], ["info", "--model", "nope"],
                                  ["audit", "nope", "--data", "."], ["infer", "x.png", "--model", "nope"],
                                  ["evaluate", "runtime/models/nope", "--data", "."]])
def test_an_unknown_name_is_one_line_and_exit_1(args, tmp_path) -> None:
    result = kedge(*args, cwd=tmp_path)
    assert result.returncode == 1
    given = args[1] if args[0] != "info" and args[0] != "infer" else args[-1]
    assert result.stderr.startswith(f"kedge: error: no such bundle folder or shipped model {given!r} (shipped: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_name_resolves_through_the_package_from_any_folder(tmp_path) -> None:
    """Run where no runtime/models is: the name still finds the installed model. A folder of
    that name in the current folder is a bundle path and wins (a user's own bundle is never
    shadowed by a shipped one)."""
    folder = installed("knee-cnn")
    assert not folder.is_relative_to(tmp_path)
    result = kedge("card", "knee-cnn", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["location"] == str(folder)
    assert kedge("card", "runtime/models/knee-cnn", cwd=tmp_path).returncode == 1  # a checkout path is no name
    from leanbundle import make_lean_bundle

    make_lean_bundle(tmp_path / "knee-cnn", tmp_path, int8=False, parity=False)
    mine = kedge("card", "knee-cnn", "--json", cwd=tmp_path)
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout)[0]["location"] == str(tmp_path / "knee-cnn")
