"""Builds the native core (`core/`, a Rust crate) into `capi_sync._core` with setuptools-rust.

Everything else about the package lives in pyproject.toml. The core is built in release mode, also
by `pip install -e .`: a debug core is correct but several times slower, and benchmarks refuse it.
Without a Rust toolchain the build goes on without the core and the Python reference maps every
row (`capi-sync --version` says which ran). `CAPI_SYNC_REQUIRE_CORE=1` (CI) makes a failed core
build an error instead; `CAPI_SYNC_PURE=1` builds without it on purpose.
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools_rust import Binding, RustExtension

required = os.environ.get("CAPI_SYNC_REQUIRE_CORE", "") == "1"
pure = os.environ.get("CAPI_SYNC_PURE", "") == "1"

setup(
    rust_extensions=[]
    if pure
    else [
        RustExtension(
            "capi_sync._core",
            path="core/Cargo.toml",
            binding=Binding.PyO3,
            features=["extension-module"],
            debug=False,
            optional=not required,
            py_limited_api="auto",
            args=["--locked"],
        )
    ],
)
