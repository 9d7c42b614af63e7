"""Wheels compile the per-row modules with mypyc: the same source, about 1.4x faster to map a row.

Everything else about the package lives in pyproject.toml. Only a wheel build (`pip install .`,
`pip wheel .`, a release) compiles; an editable install (`pip install -e .`) stays pure Python, so
an edited module takes effect without a rebuild. `CAPI_SYNC_COMPILE=0` builds a pure wheel. A
machine that cannot compile (no C compiler, no Python headers) gets a pure wheel too, with a
warning: the modules behave the same either way, compiled ones are only faster.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent

# Where a row becomes an event, and what a worker runs per row. They must stay importable under
# mypyc: no monkeypatching of their functions, and annotations that hold at run time.
COMPILED = (
    "mappings/events.py",
    "mappings/hashing.py",
    "mappings/mapper.py",
    "mappings/normalize.py",
    "mappings/sources.py",
    "mappings/urls.py",
    "mappings/validate.py",
    "mappings/values.py",
    "connectors/packing.py",
    "sync/report.py",
)
STAGE = HERE / "build" / "mypyc-src"  # the source laid out as its import names, for mypy


def _warn(message: str) -> None:
    print(f"capi-sync: {message}; building a pure-Python wheel (slower, same behaviour)", file=sys.stderr)


def _stage_sources() -> list[str]:
    """Copy the packages under their import names: mypy derives module names from folders."""
    package_dirs = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(STAGE, ignore_errors=True)
    for package, folder in package_dirs.items():
        target = STAGE.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (HERE / folder).glob("*.py"):
            shutil.copy2(source, target / source.name)
    import_names = {folder: package for package, folder in package_dirs.items()}
    staged = []
    for path in COMPILED:
        folder, name = path.split("/")
        staged.append(str(STAGE.joinpath(*import_names[folder].split("."), name)))
    return staged


def _compiled_extensions() -> list[Extension]:
    wheel_build = "bdist_wheel" in sys.argv
    if not wheel_build or os.environ.get("CAPI_SYNC_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 (a build requirement, absent at run time)
    except ImportError:
        _warn("mypyc is not installed")
        return []
    try:
        return mypycify(
            # Drivers and pycountry ship no types; their values are Any to mypyc, checked at run time.
            ["--ignore-missing-imports", "--follow-imports=silent", *_stage_sources()],
            group_name="capi_sync.compiled",  # its shared library lives inside the package
            target_dir=str(HERE / "build" / "mypyc"),
        )
    except (Exception, SystemExit) as exc:  # mypy refused the code: a pure wheel still works
        _warn(f"mypyc could not compile the mapping ({exc})")
        return []


class OptionalBuildExt(build_ext):
    """All compiled or none: a module compiled without its shared library could not be imported."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing or failing: setuptools raises several kinds
            _warn(f"compiling failed ({exc})")
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []


setup(ext_modules=_compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
