"""Parameter schemas to Python types: one pydantic model per object, aliases for enums.

Everything the template prints about parameter types is decided here: class and alias
names, annotations, ``pydantic.Field`` arguments and the order of definitions (a class
comes after everything it refers to).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from anchor_py_codegen.naming import attribute_name, pascal_case
from anchor_py_codegen.problems import KeyPath, quote
from anchor_py_codegen.pysource import INDENT, docstring, fit, scalar_literal, string_literal
from anchor_py_codegen.report import Reporter
from anchor_py_codegen.schema import INTEGER_BOUNDS, allowed_enum_values
from anchor_py_codegen.spec import ParamSchema

INTEGER_BOUND_NAMES = {"int32": ("INT32_MIN", "INT32_MAX"), "int64": ("INT64_MIN", "INT64_MAX")}
_SCALAR_TYPES = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}
_FORMAT_TYPES = {"date": "JsonDate", "date-time": "JsonDateTime"}


@dataclass
class TypeAlias:
    """``Name = Literal[...]`` or ``Name = Annotated[int, pydantic.Field(...)]``."""

    name: str
    lines: list[str]


@dataclass
class ModelClass:
    name: str
    docstring: list[str]
    config: list[str]
    fields: list[list[str]]  # each field's lines, its attribute docstring included


@dataclass
class TypeNames:
    """What the definitions refer to, so the module imports exactly what it uses."""

    uses_any: bool = False
    uses_literal: bool = False
    uses_annotated: bool = False
    uses_exact_int: bool = False
    format_types: set[str] = field(default_factory=set)
    bounds: set[str] = field(default_factory=set)


class TypeMapper:
    """Builds the definitions of all parameter models, reporting name clashes."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.definitions: list[TypeAlias | ModelClass] = []
        self.names = TypeNames()
        self._defined_at: dict[str, KeyPath] = {}

    def add_task(self, task_index: int, key: str, summary: str, class_name: str, schema: ParamSchema) -> None:
        """Define ``class_name`` (and what it refers to) for the schema under ``key`` of task ``task_index``."""
        self._model(class_name, schema, ("tasks", task_index, key), summary)

    def _claim(self, name: str, path: KeyPath) -> None:
        if name in self._defined_at:
            self.reporter.error(path, f"generates the Python name {name}, which something else already uses; rename it")
        self._defined_at[name] = path

    def _model(self, class_name: str, schema: ParamSchema, path: KeyPath, summary: str) -> str:
        self._claim(class_name, path)
        fields: list[list[str]] = []
        attributes: dict[str, str] = {}
        has_number = False
        protects_model_names = False
        for property_name, property_schema in (schema.properties or {}).items():
            property_path = path + ("properties", property_name)
            attribute = attribute_name(property_name)
            if attribute in attributes:
                self.reporter.error(
                    property_path,
                    f"maps to the same Python attribute {attribute} as {quote(attributes[attribute])}; rename one",
                )
                continue
            attributes[attribute] = property_name
            protects_model_names = protects_model_names or attribute.startswith("model_")
            has_number = has_number or property_schema.type == "number"
            hint = class_name.removesuffix("Parameters") + pascal_case(property_name)
            required = property_name in schema.required
            fields.append(self._field(attribute, property_name, property_schema, required, hint, property_path))
        config = [
            "strict=True",
            "populate_by_name=True",
            f'extra="{"ignore" if schema.additional_properties else "forbid"}"',
        ]
        if has_number:
            config.append("allow_inf_nan=False")
        if protects_model_names:
            config.append("protected_namespaces=()")  # attributes named model_* are ours
        self.definitions.append(
            ModelClass(
                name=class_name,
                docstring=docstring(schema.description or summary, INDENT),
                config=fit(INDENT, "model_config = pydantic.ConfigDict(", config, ")"),
                fields=fields,
            )
        )
        return class_name

    def _field(
        self, attribute: str, property_name: str, schema: ParamSchema, required: bool, hint: str, path: KeyPath
    ) -> list[str]:
        annotation = self._annotation(schema, hint, path, constrained_inline=True)
        arguments = [] if required else ["default=None"]
        if attribute != property_name:
            arguments.append(f"alias={string_literal(property_name)}")
        arguments.extend(self._constraints(schema))
        if not required:
            annotation += " | None"
        if arguments == ["default=None"]:
            lines = [f"{INDENT}{attribute}: {annotation} = None"]
        elif arguments:
            lines = fit(INDENT, f"{attribute}: {annotation} = pydantic.Field(", arguments, ")")
        else:
            lines = [f"{INDENT}{attribute}: {annotation}"]
        if schema.description:
            lines.extend(docstring(schema.description, INDENT))
        return lines

    def _annotation(self, schema: ParamSchema, hint: str, path: KeyPath, constrained_inline: bool) -> str:
        """The type of a value; constraints go to the caller's Field unless the value is nested."""
        if schema.enum is not None:
            self.names.uses_literal = True
            # Literal[...] takes no bounds or lengths; the values they exclude (which SQL refuses) are left out
            values = [scalar_literal(value) for value in allowed_enum_values(schema)]
            if schema.type == "integer":
                self.names.uses_annotated = self.names.uses_exact_int = True
                literal_type = ", ".join(values)
                self._alias(
                    hint,
                    fit(
                        "",
                        f"{hint} = Annotated[",
                        [f"Literal[{literal_type}]", "pydantic.BeforeValidator(exact_int)"],
                        "]",
                    ),
                    path,
                )
            else:
                self._alias(hint, fit("", f"{hint} = Literal[", values, "]"), path)
            return hint
        if schema.type == "array":
            if schema.items is None:
                self.names.uses_any = True
                return "list[Any]"
            item = self._annotation(schema.items, f"{hint}Item", path + ("items",), constrained_inline=False)
            return f"list[{item}]"
        if schema.type == "object":
            if schema.is_model:
                summary = f"An item of the {path[-2]} list." if path[-1] == "items" else f"The {path[-1]} object."
                return self._model(hint, schema, path, summary)
            self.names.uses_any = True
            return "dict[str, Any]"
        base = _SCALAR_TYPES[schema.type]
        if schema.format in _FORMAT_TYPES:
            base = _FORMAT_TYPES[schema.format]
            self.names.format_types.add(base)
        constraints = self._constraints(schema)
        if constrained_inline or not constraints:
            return base
        self.names.uses_annotated = True
        self._alias(hint, fit("", f"{hint} = Annotated[{base}, pydantic.Field(", constraints, ")]"), path)
        return hint

    def _alias(self, name: str, lines: list[str], path: KeyPath) -> None:
        self._claim(name, path)
        self.definitions.append(TypeAlias(name, lines))

    def _constraints(self, schema: ParamSchema) -> list[str]:
        if schema.enum is not None or schema.type in ("object", "array", "boolean"):
            return []
        low = None if schema.minimum is None else scalar_literal(schema.minimum)
        high = None if schema.maximum is None else scalar_literal(schema.maximum)
        if schema.format in INTEGER_BOUNDS:
            smallest, largest = INTEGER_BOUNDS[schema.format]
            low_name, high_name = INTEGER_BOUND_NAMES[schema.format]
            if schema.minimum is None or schema.minimum <= smallest:
                low = low_name
                self.names.bounds.add(low_name)
            if schema.maximum is None or schema.maximum >= largest:
                high = high_name
                self.names.bounds.add(high_name)
        constraints = [] if low is None else [f"ge={low}"]
        if high is not None:
            constraints.append(f"le={high}")
        if schema.min_length is not None:
            constraints.append(f"min_length={schema.min_length}")
        if schema.max_length is not None:
            constraints.append(f"max_length={schema.max_length}")
        return constraints
