"""The wheel's mypyc-compiled modules (setup.py) behave exactly as the Python source they come from.

mypyc checks annotations at run time and compiles frozen dataclasses into classes that pickle
differently, so a compiled build can break where the source works. Here a wheel is built and
installed aside, and the whole suite runs again against it, with an event-for-event comparison
of one pipeline's output on top.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPILED_RUN = "CAPI_SYNC_TEST_COMPILED"  # set in the suite's second run, against the wheel

pytestmark = [
    pytest.mark.skipif(bool(os.environ.get(COMPILED_RUN)), reason="this is the run against the wheel"),
    pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: wheels here are pure Python"),
]


def _build_wheel(source: Path, work: Path, **env: str) -> tuple[Path, list[str]]:
    """Build `source`'s wheel and unpack it: (the folder to put on PYTHONPATH, setup.py's warnings)."""
    env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore", **env}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", work, source],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = work.glob("capi_sync-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", work / "site", wheel],
        check=True,
        capture_output=True,
        env=env,
    )
    return work / "site", [line for line in build.stderr.splitlines() if "capi-sync:" in line]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """This checkout's wheel, pure and compiled, each unpacked in a folder to put on PYTHONPATH.

    Both are built, not taken from the install, so only compiling differs between the two.
    """
    folders = {}
    for name, compile_modules in (("pure", "0"), ("compiled", "1")):
        folders[name], warnings = _build_wheel(
            REPO, tmp_path_factory.mktemp(name), CAPI_SYNC_COMPILE=compile_modules
        )
        assert not warnings, "\n".join(warnings)
    return folders


def _with(modules: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(modules)}


def test_only_the_compiled_wheel_maps_rows_with_compiled_modules(builds: dict[str, Path]) -> None:
    probe = "import capi_sync; print(capi_sync.compiled())"
    for name, expected in (("pure", "False"), ("compiled", "True")):
        found = subprocess.run(
            [sys.executable, "-c", probe], env=_with(builds[name]), capture_output=True, text=True, check=True
        )
        assert found.stdout.strip() == expected, name
    assert list((builds["compiled"] / "capi_sync").glob("compiled__mypyc*.so"))
    assert not list(builds["pure"].rglob("*.so"))


def test_compiled_and_pure_builds_write_the_same_events(builds: dict[str, Path], tmp_path: Path) -> None:
    outputs = []
    for name, modules in builds.items():
        output = tmp_path / f"{name}.jsonl"
        command = [
            sys.executable,
            "-m",
            "capi_sync",
            "run",
            "purchases",
            "--dry-run",
            "--output",
            str(output),
        ]
        env = {**_with(modules), "CAPI_SYNC_STATE": f"sqlite:///{tmp_path / name}.db"}
        subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=True)
        outputs.append(output.read_bytes())
    assert outputs[0].count(b"\n") > 0
    assert outputs[0] == outputs[1]


@pytest.mark.timeout(900)
def test_the_whole_suite_passes_against_the_compiled_wheel(builds: dict[str, Path]) -> None:
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(REPO / "tests")],
        cwd=REPO,
        env={**_with(builds["compiled"]), COMPILED_RUN: "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert suite.returncode == 0, suite.stdout[-6000:] + suite.stderr[-2000:]


def test_a_machine_that_cannot_compile_gets_a_working_pure_wheel(tmp_path: Path) -> None:
    source = tmp_path / "checkout"  # a copy: a checkout's own build/ would let setuptools reuse objects
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in ("sync", "connectors", "mappings"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    modules, warnings = _build_wheel(source, tmp_path / "wheel", CC="/bin/false")
    assert any("compiling failed" in line and "pure-Python wheel" in line for line in warnings), warnings
    assert not list(modules.rglob("*.so"))
    output = tmp_path / "events.jsonl"
    command = [sys.executable, "-m", "capi_sync", "run", "purchases", "--dry-run", "--output", str(output)]
    env = {**_with(modules), "CAPI_SYNC_STATE": f"sqlite:///{tmp_path / 'state.db'}"}
    subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=True)
    assert output.read_bytes().count(b"\n") > 0
