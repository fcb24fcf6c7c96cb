"""A lean accept-only check compiled from a *flat* JSON Schema, in front of fastjsonschema.

fastjsonschema's generated code is general (every keyword, error messages, Decimal) and costs ~5 µs per
listing. Listing v1 is a flat object of strings and integers, so a specialised function does the same
checks in a fraction of that, and builds the listing from the values it checked. It only ever answers
"certainly valid" (the listing) or "not sure" (None); on None the validator runs fastjsonschema, which
makes the decision and writes the error message. So a
fast path that is too strict costs time, never correctness; `tests/test_validate_fastcheck.py` compares
both on valid and mutated events. Schemas using any keyword outside the small subset below get no fast
path (`compile_fast_check` returns None).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["compile_fast_check"]

_ANNOTATIONS = {"title", "description", "examples", "$comment", "$id", "$schema", "default"}
_TOP_LEVEL = _ANNOTATIONS | {"type", "required", "properties", "additionalProperties", "x-max-payload-bytes"}
_PROPERTY = _ANNOTATIONS | {
    "type",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "const",
    "format",
}
_TYPES = {"string": "str", "integer": "int", "null": None}
T = TypeVar("T")


def _property_lines(index: int, name: str, spec: dict[str, Any], required: bool,
                    env: dict[str, Any]) -> list[str] | None:  # fmt: skip
    if set(spec) - _PROPERTY:
        return None
    lines = [
        f"    v = get({name!r}, MISSING)",
        "    if v is MISSING:",
        f"        {'return None' if required else 'v = None'}",
    ]
    if "const" in spec:
        const = spec["const"]
        if type(const) not in (int, str) or set(spec) - _ANNOTATIONS - {"const"}:
            return None
        lines.append(
            f"    elif type(v) is not {type(const).__name__} or v != {const!r}:\n        return None"
        )
        return lines
    kinds = spec.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not kinds or any(k not in _TYPES for k in kinds) or len([k for k in kinds if _TYPES[k]]) != 1:
        return None
    python_type = next(_TYPES[k] for k in kinds if _TYPES[k])
    checks = [f"type(v) is not {python_type}"]
    if python_type == "str":
        if int(spec.get("minLength", 0)) > 0:
            checks.append(f"len(v) < {int(spec['minLength'])}")
        if "maxLength" in spec:
            checks.append(f"len(v) > {int(spec['maxLength'])}")
        if "pattern" in spec:
            # Same regex semantics as fastjsonschema: search, with a trailing $ meaning end of string.
            env[f"P{index}"] = re.compile(re.sub(r"\$$", r"\\Z", spec["pattern"])).search
            checks.append(f"not P{index}(v)")
        if spec.get("format") not in (None, "date-time"):
            return None
        if spec.get("format") == "date-time":
            checks.append("not is_datetime(v)")
    elif {"minLength", "maxLength", "pattern", "format"} & set(spec):
        return None
    for key, op in (("minimum", "<"), ("maximum", ">")):
        if key in spec:
            if python_type != "int" or type(spec[key]) is not int:
                return None
            checks.append(f"v {op} {spec[key]}")
    guard = f"    elif v is None:\n        {'pass' if None in [_TYPES[k] for k in kinds] else 'return None'}"
    lines += [guard, f"    elif {' or '.join(checks)}:", "        return None"]
    return lines


def compile_fast_check(
    schema: dict[str, Any], is_datetime: Callable[[str], bool], build: Callable[..., T], fields: Sequence[str]
) -> Callable[[dict[str, Any]], T | None] | None:
    """`check(data) -> build(*values of fields)` only when `data` certainly satisfies `schema`, else None.

    Absent optional properties give None. Returns None (no fast path) if the schema is not flat.
    """
    if (
        set(schema) - _TOP_LEVEL
        or schema.get("type") != "object"
        or schema.get("additionalProperties", True) is not True
    ):
        return None
    required = set(schema.get("required", []))
    properties: dict[str, Any] = schema.get("properties", {})
    if not required <= set(properties) or not set(fields) <= set(properties):
        return None
    env: dict[str, Any] = {"MISSING": object(), "is_datetime": is_datetime, "BUILD": build}
    lines = ["def check(data):", "    get = data.get"]
    for index, (name, spec) in enumerate(properties.items()):
        property_lines = _property_lines(index, name, spec, name in required, env)
        if property_lines is None:
            return None
        lines += property_lines
        if name in fields:
            lines.append(f"    f{fields.index(name)} = v")
    lines.append(f"    return BUILD({', '.join(f'f{i}' for i in range(len(fields)))})")
    exec(compile("\n".join(lines), "<fast-check>", "exec"), env)
    return env["check"]
