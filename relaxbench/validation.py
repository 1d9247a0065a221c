"""JSON-schema checks with relaxbench's stricter reading, shared by configs and task parameters.

Stricter than plain JSON Schema in two ways that matter for YAML written by hand: ``integer`` means a Python
``int`` (``epochs: 2.0`` is refused, not read as 2) and never a boolean (nor is ``number``), and every number
anywhere must be finite (``.nan`` and ``.inf`` pass ``minimum`` / ``maximum`` checks, since comparisons with
NaN are false). Messages name the key as a dotted path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from relaxbench.errors import shown

__all__ = ["SEED", "describe", "first_error", "non_finite"]

#: Schema of a random seed: also fits ``seed + 10_000`` in the 32-bit seeds numpy and scikit-learn take.
SEED = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}


def _is_integer(checker, instance) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_number(checker, instance) -> bool:
    return isinstance(instance, (int, float)) and not isinstance(instance, bool)


_TYPES = Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
StrictValidator = jsonschema.validators.extend(Draft202012Validator, type_checker=_TYPES)


def describe(err: jsonschema.ValidationError) -> str:
    """``at '<dotted.key>': <what is wrong>``; unknown keys come with the choices."""
    where = ".".join(shown(p)[1:-1] if isinstance(p, str) else str(p) for p in err.absolute_path)
    where = where or "<top level>"
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        unknown = sorted(set(err.instance) - set(allowed))
        return f"at '{where}': unknown key(s) {unknown}; choices: {allowed}"
    message = err.message if len(err.message) <= 200 else err.message[:180] + "..."
    return f"at '{where}': {message}"


def non_finite(obj: Any, where: str = "") -> str | None:
    """``at '<key>': ...`` for the first NaN or infinite number in ``obj`` (walking dicts and lists), else
    ``None``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"at '{where or '<top level>'}': {obj!r} is not a finite number"
    items = obj.items() if isinstance(obj, Mapping) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def first_error(instance: Any, schema: Mapping[str, Any]) -> str | None:
    """The first problem of ``instance`` against ``schema`` (non-finite numbers first, then schema errors in
    key order) as one :func:`describe` line, or ``None``."""
    found = non_finite(instance)
    if found:
        return found
    errors = sorted(
        StrictValidator(schema).iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]
    )
    return describe(errors[0]) if errors else None
