"""`${VAR}` and `${VAR:-default}` in YAML string values; `$${` writes a literal `${`.

Substitution runs on parsed values, not on the raw text, so a secret containing YAML syntax
cannot change the document's structure.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

_PATTERN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute(node: Any, env: Mapping[str, str] | None = None) -> tuple[Any, list[str]]:
    """Return the document with variables replaced, and one error per missing variable."""
    environ = os.environ if env is None else env
    errors: list[str] = []

    def replace_in(text: str, where: str) -> str:
        def one(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            var, default = match.group(1), match.group(2)
            if var in environ:
                return environ[var]
            if default is not None:
                return default
            errors.append(f"{where}: environment variable {var} is not set")
            return ""

        return _PATTERN.sub(one, text)

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, str):
            return replace_in(value, where)
        if isinstance(value, dict):
            return {key: walk(item, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return value

    return walk(node, ""), errors
