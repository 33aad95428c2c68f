"""The build ships bytecode: Lambda's code directories are read-only, so a module without a .pyc is
compiled again at every cold start (about 4.5x slower imports; bench/bench_coldstart.py measures it).
`make test` runs `make build` before this tier; run `make build` first when running it alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from annex_local.template import load_template

BUILD = Path(__file__).resolve().parents[2] / ".aws-sam" / "build"
UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source not checked


def runtime_tag() -> str:
    runtime = load_template()["Globals"]["Function"]["Runtime"]  # e.g. python3.13
    major, minor = runtime.removeprefix("python").split(".")
    return f"cpython-{major}{minor}"


def code_dirs() -> list[Path]:
    resources = load_template()["Resources"]
    dirs = [BUILD / name for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"]
    dirs += [
        BUILD / name / "python"
        for name, r in resources.items()
        if r["Type"] == "AWS::Serverless::LayerVersion"
    ]
    return dirs


@pytest.fixture(scope="module")
def built() -> list[Path]:
    if not BUILD.is_dir():
        pytest.fail("no .aws-sam/build: run `make build` first (make test does)")
    return code_dirs()


def test_tests_run_on_the_runtime_python():
    # The .pyc files are compiled by the dev venv's interpreter: it must be the runtime's version.
    assert sys.implementation.cache_tag == runtime_tag()


def test_every_module_of_every_function_and_layer_ships_unchecked_bytecode(built):
    tag = runtime_tag()
    missing, stale = [], []
    sources = 0
    for root in built:
        assert root.is_dir(), f"{root} is not in the build output"
        for source in root.rglob("*.py"):
            sources += 1
            pyc = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
            if not pyc.is_file():
                missing.append(str(source.relative_to(BUILD)))
                continue
            header = pyc.read_bytes()[:8]
            if (
                header[:4] != importlib.util.MAGIC_NUMBER
                or int.from_bytes(header[4:8], "little") != UNCHECKED_HASH
            ):
                stale.append(str(pyc.relative_to(BUILD)))
    assert sources > 100  # the layer's dependencies are in the build
    assert not missing, f"{len(missing)} modules without bytecode, e.g. {missing[:5]}"
    assert not stale, f"{len(stale)} .pyc files not unchecked-hash for this Python, e.g. {stale[:5]}"


def test_the_layer_ships_powertools_without_the_xray_sdk(built):
    # Powertools' Tracer imported the X-Ray SDK at every cold start in Lambda; no function uses
    # it any more, and the layer no longer ships it (`aws-lambda-powertools` without the [tracer] extra).
    layers = [root for root in built if root.name == "python"]
    assert layers, "the domain layer is in the build"
    for layer in layers:
        assert (layer / "aws_lambda_powertools").is_dir()
        assert (layer / "pydantic").is_dir()
        assert not (layer / "aws_xray_sdk").exists(), f"{layer} ships the X-Ray SDK"
        assert not (layer / "wrapt").exists(), f"{layer} ships wrapt (the X-Ray SDK's dependency)"
