import capi_sync
import capi_sync.connectors
import capi_sync.mappings


def test_every_exported_name_exists() -> None:
    for module in (capi_sync, capi_sync.connectors, capi_sync.mappings):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], module.__name__
