"""A small TOML writer for model configs, laid out the way a person would write them: scalars
first, inline lists of scalars, then [tables] and [[arrays of tables]] (tomllib only reads)."""

from __future__ import annotations

import json
import math
from typing import Any


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML cannot hold {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, dict) for v in value)


def _body(table: dict[str, Any], prefix: str) -> list[str]:
    lines = [f"{k} = {_value(v)}" for k, v in table.items()
             if v is not None and not isinstance(v, dict) and not _is_table_array(v)]
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            lines += ["", f"[{name}]", *_body(value, f"{name}.")]
        elif _is_table_array(value):
            for entry in value:
                lines += ["", f"[[{name}]]", *_body(entry, f"{name}.")]
    return lines


def dumps(table: dict[str, Any]) -> str:
    return "\n".join(_body(table, "")).lstrip("\n") + "\n"
