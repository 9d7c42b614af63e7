"""Row to event: field catalog, normalization, hashing, validation and the compiled mapper."""

from capi_sync.mappings.mapper import EventMapper, MappedRow, Rejection, compile_mapping
from capi_sync.mappings.validate import Problem

__all__ = ["EventMapper", "MappedRow", "Problem", "Rejection", "compile_mapping"]
