"""The public surface: `__all__` lists what a caller imports, and every exception sits in
`capi_sync.errors`' one tree, so `except CapiSyncError` catches whatever capi-sync raises."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import capi_sync
import capi_sync.connectors
import capi_sync.mappings
from capi_sync import errors


def test_every_exported_name_exists() -> None:
    for module in (capi_sync, capi_sync.connectors, capi_sync.mappings):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], module.__name__


def test_the_package_exports_every_error_and_its_entry_points() -> None:
    public_errors = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    assert public_errors - set(capi_sync.__all__) == set()
    namespace: dict[str, object] = {}
    exec("from capi_sync import *", namespace)  # the star import a user writes
    assert set(capi_sync.__all__) <= set(namespace)
    assert {"run_pipeline", "load_config", "StateStore", "RunOptions", "engine", "__version__"} <= set(
        capi_sync.__all__
    )


def _modules() -> list[ModuleType]:
    found = []
    for package in (capi_sync, capi_sync.connectors, capi_sync.mappings):  # three folders, one package
        found.append(package)
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if info.name != "capi_sync.__main__":  # running it is the CLI
                found.append(importlib.import_module(info.name))
    return found


def test_every_exception_is_defined_in_the_errors_tree() -> None:
    modules = _modules()
    assert {"capi_sync.connectors.duckdb", "capi_sync.mappings.mapper", "capi_sync.runner"} <= {
        m.__name__ for m in modules
    }
    elsewhere = [
        f"{module.__name__}.{name}"
        for module in modules
        if module is not errors
        for name, value in vars(module).items()
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__
    ]
    # click's carrier of an exit code, raised and caught inside the CLI only
    assert elsewhere == ["capi_sync.cli.RunFailed", "capi_sync.cli.SetupFailed"]
    for name, value in vars(errors).items():
        if inspect.isclass(value) and issubclass(value, BaseException):
            expected = KeyboardInterrupt if name == "StopRequested" else errors.CapiSyncError
            assert issubclass(value, expected), name
            assert f" {name}" in (errors.__doc__ or ""), (
                f"{name} is drawn in the tree of errors.py's docstring"
            )
