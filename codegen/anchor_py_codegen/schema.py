"""Parameter schemas: the supported JSON Schema subset, and values checked against it.

Only the keywords below are accepted, so the generated pydantic models and the SQL
validator implement the same language and can never disagree about a params document.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import pydantic

from anchor_py.taskspec import INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN, JsonDate, JsonDateTime
from anchor_py_codegen.naming import did_you_mean
from anchor_py_codegen.problems import KeyPath, quote
from anchor_py_codegen.report import Reporter, show
from anchor_py_codegen.spec import ParamSchema, SchemaType

KEYWORDS = (
    "type",
    "description",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
)
TYPES: tuple[SchemaType, ...] = ("object", "array", "string", "integer", "number", "boolean")
FORMATS: dict[str, tuple[str, ...]] = {
    "integer": ("int32", "int64"),
    "number": ("float", "double"),
    "string": ("date", "date-time"),
}
INTEGER_BOUNDS = {"int32": (INT32_MIN, INT32_MAX), "int64": (INT64_MIN, INT64_MAX)}
# Which types each type-specific keyword applies to.
_APPLIES_TO: dict[str, tuple[str, ...]] = {
    "properties": ("object",),
    "required": ("object",),
    "additionalProperties": ("object",),
    "items": ("array",),
    "enum": ("string", "integer"),
    "minimum": ("integer", "number"),
    "maximum": ("integer", "number"),
    "minLength": ("string",),
    "maxLength": ("string",),
    "format": tuple(FORMATS),
}
_STRING_FORMATS: dict[str, pydantic.TypeAdapter[Any]] = {
    "date": pydantic.TypeAdapter(JsonDate),
    "date-time": pydantic.TypeAdapter(JsonDateTime),
}


def check_schema(data: object, path: KeyPath, reporter: Reporter) -> ParamSchema | None:
    """The schema at ``path`` as a ParamSchema, or None after reporting what is wrong."""
    if not isinstance(data, dict):
        reporter.error(path, f"a schema must be a mapping, not {show(data)}")
        return None
    errors_before = len(reporter.errors)
    for key in data:
        if key not in KEYWORDS:
            reporter.error(
                path + (key,),
                f"{quote(key)} is not a supported JSON Schema keyword{did_you_mean(key, KEYWORDS)}; "
                f"supported: {', '.join(KEYWORDS)}",
            )
    schema_type = data.get("type")
    if "type" not in data:
        reporter.error(path, f"type is required (one of {', '.join(TYPES)})")
        return None
    if schema_type not in TYPES:
        reporter.error(path + ("type",), f"{show(schema_type)} is not a supported type; use one of {', '.join(TYPES)}")
        return None
    for key, types in _APPLIES_TO.items():
        if key in data and schema_type not in types:
            reporter.error(path + (key,), f"{key} does not apply to type {schema_type}")
    fields: dict[str, Any] = {"type": schema_type}
    if "description" in data:
        fields["description"] = _string(data["description"], path + ("description",), reporter)
    if schema_type == "object":
        fields.update(_object_fields(data, path, reporter))
    elif schema_type == "array" and "items" in data:
        fields["items"] = check_schema(data["items"], path + ("items",), reporter)
    fields.update(_scalar_fields(data, cast(SchemaType, schema_type), path, reporter))
    if len(reporter.errors) > errors_before:
        return None
    schema = ParamSchema(**fields)
    _check_enum_bounds(schema, path, reporter)
    if len(reporter.errors) > errors_before:
        return None
    return schema


def _string(value: object, path: KeyPath, reporter: Reporter) -> str | None:
    if not isinstance(value, str):
        reporter.error(path, f"{show(value)} is not a string")
        return None
    return value


def _object_fields(data: Mapping[str, object], path: KeyPath, reporter: Reporter) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    properties = data.get("properties")
    if "properties" in data:
        if not isinstance(properties, dict):
            reporter.error(path + ("properties",), "properties must be a mapping of property name to schema")
        else:
            fields["properties"] = {
                name: check_schema(schema, path + ("properties", name), reporter) for name, schema in properties.items()
            }
    if "additionalProperties" in data:
        additional = data["additionalProperties"]
        if not isinstance(additional, bool):
            reporter.error(path + ("additionalProperties",), f"{show(additional)} must be true or false")
        else:
            fields["additional_properties"] = additional
    if "required" in data:
        required = data["required"]
        known = properties if isinstance(properties, dict) else {}
        if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
            reporter.error(path + ("required",), "required must be a list of property names")
        else:
            for index, name in enumerate(required):
                if name not in known:
                    reporter.error(
                        path + ("required", index),
                        f"{show(name)} is not among the properties{did_you_mean(name, known)}",
                    )
                elif required.index(name) != index:
                    reporter.error(path + ("required", index), f"{show(name)} is listed twice")
            fields["required"] = tuple(required)
    return fields


def _scalar_fields(
    data: Mapping[str, object], schema_type: SchemaType, path: KeyPath, reporter: Reporter
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    schema_format = data.get("format")
    if "format" in data and schema_type in FORMATS:
        if schema_format not in FORMATS[schema_type]:
            reporter.error(
                path + ("format",),
                f"{show(schema_format)} is not a supported format for {schema_type} "
                f"(use {' or '.join(FORMATS[schema_type])})",
            )
        else:
            fields["format"] = schema_format
    if "enum" in data and schema_type in _APPLIES_TO["enum"]:
        fields["enum"] = _enum(data["enum"], schema_type, "format" in data, path + ("enum",), reporter)
    for key, attribute in (("minimum", "minimum"), ("maximum", "maximum")):
        if key in data and schema_type in _APPLIES_TO[key]:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                reporter.error(path + (key,), f"{show(value)} is not a number")
            else:
                fields[attribute] = value
    for key, attribute in (("minLength", "min_length"), ("maxLength", "max_length")):
        if key in data and schema_type == "string":
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                reporter.error(path + (key,), f"{show(value)} is not an integer >= 0")
            else:
                fields[attribute] = value
    for low, high, attribute_low, attribute_high in (
        ("minimum", "maximum", "minimum", "maximum"),
        ("minLength", "maxLength", "min_length", "max_length"),
    ):
        if attribute_low in fields and attribute_high in fields and fields[attribute_low] > fields[attribute_high]:
            reporter.error(
                path + (low,), f"{low} {fields[attribute_low]} is greater than {high} {fields[attribute_high]}"
            )
    return fields


def _enum(
    values: object, schema_type: str, has_format: bool, path: KeyPath, reporter: Reporter
) -> tuple[str | int, ...] | None:
    if not isinstance(values, list) or not values:
        reporter.error(path, "enum must be a non-empty list of values")
        return None
    if has_format:
        reporter.error(path, "enum cannot be combined with format")
    for index, value in enumerate(values):
        if not _is_type(value, schema_type):
            reporter.error(path + (index,), f"{show(value)} is not of type {schema_type}")
        elif values.index(value) != index:
            reporter.error(path + (index,), f"{show(value)} is listed twice")
    return tuple(values)


def allowed_enum_values(schema: ParamSchema) -> tuple[str | int, ...]:
    """The values of ``schema.enum`` that also keep its minimum/maximum/minLength/maxLength: the ones
    ``anchor.params_violation`` accepts, so the generated Literal lists exactly these."""
    return tuple(value for value in schema.enum or () if not _scalar_violations(schema, value, ()))


def _check_enum_bounds(schema: ParamSchema, path: KeyPath, reporter: Reporter) -> None:
    """An enum next to bounds or lengths: no value left is an error, a value left out a warning."""
    if schema.enum is None:
        return
    allowed = allowed_enum_values(schema)
    keywords = [
        f"{key} {value}"
        for key, value in (
            ("minimum", schema.minimum),
            ("maximum", schema.maximum),
            ("minLength", schema.min_length),
            ("maxLength", schema.max_length),
        )
        if value is not None
    ]
    if not allowed:
        reporter.error(
            path + ("enum",),
            f"no value of the enum satisfies {' and '.join(keywords)}; list only the allowed values",
        )
        return
    for index, value in enumerate(schema.enum):
        if value not in allowed:
            _, message = _scalar_violations(schema, value, ())[0]
            reporter.warning(
                path + ("enum", index),
                f"{message}, so this value is never accepted; list only the allowed values",
            )


def _is_type(value: object, schema_type: str) -> bool:
    if schema_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if schema_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if schema_type == "string":
        return isinstance(value, str)
    if schema_type == "boolean":
        return isinstance(value, bool)
    if schema_type == "array":
        return isinstance(value, list)
    return isinstance(value, dict)


def value_violations(
    schema: ParamSchema, value: object, path: KeyPath, check_required: bool = True
) -> list[tuple[KeyPath, str]]:
    """Where ``value`` breaks ``schema``, as (path, message) pairs; empty when it conforms.

    With ``check_required=False`` missing required properties of the top object are not
    reported (a cron task may fill them from the fire time).
    """
    if not _is_type(value, schema.type):
        return [(path, f"{show(value)} is not of type {schema.type}")]
    if schema.enum is not None and value not in schema.enum:
        return [(path, f"{show(value)} is not one of {show(list(schema.enum))}")]
    if isinstance(value, dict):
        return _object_violations(schema, value, path, check_required)
    if isinstance(value, list):
        if schema.items is None:
            return []
        items = schema.items
        return [
            violation
            for index, item in enumerate(value)
            for violation in value_violations(items, item, path + (index,))
        ]
    return _scalar_violations(schema, value, path)


def _object_violations(
    schema: ParamSchema, value: dict[str, Any], path: KeyPath, check_required: bool
) -> list[tuple[KeyPath, str]]:
    violations: list[tuple[KeyPath, str]] = []
    properties = schema.properties or {}
    if check_required:
        violations.extend(
            (path, f"required property {quote(name)} is missing") for name in schema.required if name not in value
        )
    for name, item in value.items():
        if name in properties:
            violations.extend(value_violations(properties[name], item, path + (name,)))
        elif not schema.additional_properties:
            violations.append((path + (name,), f"unknown property{did_you_mean(name, properties)}"))
    return violations


def _scalar_violations(schema: ParamSchema, value: object, path: KeyPath) -> list[tuple[KeyPath, str]]:
    low, high = schema.minimum, schema.maximum
    if schema.format in INTEGER_BOUNDS:
        bounds = INTEGER_BOUNDS[schema.format]
        low = bounds[0] if low is None else max(low, bounds[0])
        high = bounds[1] if high is None else min(high, bounds[1])
    if isinstance(value, (int, float)):
        if low is not None and value < low:
            return [(path, f"{show(value)} is less than the minimum {low}")]
        if high is not None and value > high:
            return [(path, f"{show(value)} is greater than the maximum {high}")]
    if isinstance(value, str):
        if schema.min_length is not None and len(value) < schema.min_length:
            return [(path, f"{show(value)} is shorter than {schema.min_length} characters")]
        if schema.max_length is not None and len(value) > schema.max_length:
            return [(path, f"{show(value)} is longer than {schema.max_length} characters")]
        adapter = _STRING_FORMATS.get(schema.format or "")
        if adapter is not None:
            try:
                adapter.validate_python(value)
            except pydantic.ValidationError:
                return [(path, f"{show(value)} is not a {schema.format} (RFC 3339)")]
    return []
