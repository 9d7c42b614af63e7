"""Types of the native core (`core/src/lib.rs`), built by setuptools-rust as `capi_sync._core`."""

from typing import Any, final

__version__: str
build_profile: str  # "release" or "debug"; benchmarks refuse a debug build
unicode_version: str  # the Unicode of the CPython whose tables the core carries
NAME_SHIFT: int  # a shape's bits from here up: the index of its event's name in `Built.event_names`

@final
class Plan:
    """A pipeline's mapping compiled once per run (`capi_sync.native.compile_plan`)."""

    def __init__(self, spec_json: str) -> None: ...
    @property
    def user_order(self) -> list[str]: ...

@final
class Built:
    """What `build` returns for one record batch."""

    @property
    def native(self) -> bytes: ...
    @property
    def row_keys(self) -> list[str | None]: ...
    @property
    def events(self) -> list[bytes]: ...
    @property
    def shapes(self) -> list[int]: ...
    @property
    def event_names(self) -> list[str]: ...

def build(plan: Plan, batch: Any, now: float) -> Built: ...
def derive_event_id(pipeline: str, row_key: str) -> str: ...
