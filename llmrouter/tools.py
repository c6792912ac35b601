"""The router-side tool registry: host Python functions, each with the JSON schema and
description a model sees, and a ``call`` that validates the model's arguments first.

A registered function is described from its own signature: the type hints become a JSON
schema through pydantic (``str``, numbers, ``bool``, ``Literal``, enums, lists, optional and
defaulted parameters, nested pydantic models), the docstring's first paragraph becomes the
description, and each parameter's description comes from ``Annotated[..., Field(description=
...)]`` or, failing that, the docstring's Google-style ``Args:`` section.

Only sync functions are accepted: an ``async def`` is refused with a ``TypeError`` (the loop
runs tools in worker threads; a coroutine there would need an event loop of its own).

``RegisteredTool.call`` never raises for arguments the model got wrong: they come back as a
tool-result string naming each problem, which the model can read and correct. What the
function itself raises is not ``call``'s business: it propagates, for the loop to turn into
a result the model can read.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import threading
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticSerializationError, to_json

if TYPE_CHECKING:
    from .config import ToolSettings

#: OpenAI's rule for a function name
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# A Google-style docstring's sections; the first paragraph ends before any of them.
_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Examples?|Notes?):\s*$"
)
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


@dataclass(frozen=True)
class RegisteredTool:
    """One registered function, as a model sees it and as the router calls it."""

    name: str
    description: str
    #: the JSON schema of the arguments: ``{"type": "object", "properties", "required"}``
    parameters: dict[str, Any]
    func: Callable[..., Any]
    #: seconds the loop lets one call run (None: no limit of its own)
    timeout: float | None = None
    _arguments: type[BaseModel] = field(default=BaseModel, repr=False)

    def definition(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry of this tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def call(self, arguments_json: str) -> str:
        """Run the function on the model's arguments (a JSON object; an empty string is
        taken as ``{}``) and return its result as a tool-result string: a ``str`` as it is,
        anything else as JSON.

        Arguments that do not fit the schema (not JSON, not an object, a wrong type, a
        missing or an unknown parameter) are not passed on: the result is a message naming
        each problem. Whatever the function raises propagates.
        """
        try:
            validated = self._arguments.model_validate_json(arguments_json.strip() or "{}")
        except ValidationError as exc:
            return _invalid_arguments_message(self.name, exc)
        # getattr per field, not model_dump: nested models reach the function as models
        values = {name: getattr(validated, name) for name in type(validated).model_fields}
        result = self.func(**values)
        if isinstance(result, str):
            return readable(result)
        try:
            return to_json(result, fallback=str).decode()
        except PydanticSerializationError:  # a lone surrogate in a string of the result
            return readable(
                json.dumps(result, default=str, ensure_ascii=False, separators=(",", ":"))
            )


def readable(text: str) -> str:
    """``text`` as every provider and database takes it: a lone surrogate (a file name that
    was not UTF-8, say) becomes ``?``."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()
    return text


class ToolRegistry:
    """The functions the router offers models, by name, in registration order."""

    def __init__(self) -> None:
        self._tools: dict[str, RegisteredTool] = {}
        # the same tools, replaced whole on each registration: requests iterate it without
        # a lock while a late registration may be under way
        self._ordered: tuple[RegisteredTool, ...] = ()
        self._lock = threading.Lock()

    def register(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
    ) -> RegisteredTool:
        """Register ``func`` (a sync function with a type hint on every parameter) under
        ``name`` (default: its ``__name__``). A name OpenAI would refuse, a taken name or a
        bad ``timeout`` is a ``ValueError``; a function that cannot be described (async,
        ``*args``/``**kwargs``, positional-only or unannotated parameters, a type with no
        JSON schema) is a ``TypeError`` naming what is wrong."""
        tool = describe(func, name=name, description=description, timeout=timeout)
        with self._lock:
            if tool.name in self._tools:
                raise ValueError(f"a tool named {tool.name!r} is already registered")
            self._tools[tool.name] = tool
            self._ordered = (*self._ordered, tool)
        return tool

    def get(self, name: str) -> RegisteredTool | None:
        """The tool registered as ``name``, or None."""
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def definitions(self) -> list[dict[str, Any]]:
        """Every tool's OpenAI ``tools`` entry, in registration order."""
        return [tool.definition() for tool in self._ordered]

    def enabled(self, settings: ToolSettings) -> list[RegisteredTool]:
        """The tools ``[tools] enabled`` lets the router offer (every one when it is not
        set), in registration order; a name there that is not registered is skipped."""
        if settings.enabled is None:
            return list(self._ordered)
        names = set(settings.enabled)
        return [tool for tool in self._ordered if tool.name in names]

    def __iter__(self) -> Iterator[RegisteredTool]:
        """The tools in registration order."""
        return iter(self._ordered)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._ordered)


def describe(
    func: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
) -> RegisteredTool:
    """A ``RegisteredTool`` for ``func``, not registered anywhere (see ``register``)."""
    if not callable(func):
        raise TypeError(f"a tool must be a function, not {type(func).__name__}")
    label = getattr(func, "__qualname__", repr(func))
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(f"tool {label}: only sync functions can be tools, not an async def")
    tool_name = name if name is not None else getattr(func, "__name__", "")
    if not isinstance(tool_name, str) or not TOOL_NAME.fullmatch(tool_name):
        raise ValueError(
            f"tool name {tool_name!r} is not allowed: 1 to 64 letters, digits, '_' or '-'"
        )
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(f"tool {tool_name!r}: timeout must be a number of seconds > 0")
    summary, arg_docs = _parse_docstring(inspect.getdoc(func) or "")
    arguments = _arguments_model(func, label, arg_docs)
    try:
        schema = arguments.model_json_schema()
    except (PydanticSchemaGenerationError, PydanticUserError) as exc:
        raise TypeError(f"tool {label}: its parameters have no JSON schema: {exc}") from exc
    return RegisteredTool(
        name=tool_name,
        description=description if description is not None else summary,
        parameters=_openai_parameters(schema, label),
        func=func,
        timeout=float(timeout) if timeout is not None else None,
        _arguments=arguments,
    )


def _arguments_model(
    func: Callable[..., Any], label: str, arg_docs: dict[str, str]
) -> type[BaseModel]:
    """A pydantic model with one field per parameter of ``func``; unknown fields refused."""
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:  # a hint naming something that does not exist
        raise TypeError(f"tool {label}: its type hints cannot be resolved: {exc}") from exc
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(func).parameters.values():
        where = f"tool {label}: parameter {parameter.name!r}"
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"{where}: *args and **kwargs cannot be described to a model")
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise TypeError(f"{where}: positional-only parameters cannot be tool arguments")
        if parameter.name.startswith("_"):
            raise TypeError(f"{where}: a tool argument's name cannot start with '_'")
        if parameter.name not in hints:
            raise TypeError(f"{where} has no type hint (the model needs its type)")
        annotation = hints[parameter.name]
        default = ... if parameter.default is parameter.empty else parameter.default
        doc = arg_docs.get(parameter.name)
        # Annotated[..., Field(description=...)] wins over the docstring's Args section
        if doc and not _has_description(annotation):
            annotation = typing.Annotated[annotation, Field(description=doc)]
        fields[parameter.name] = (annotation, default)
    try:
        return create_model(  # type: ignore[no-any-return, call-overload]
            f"{label.replace('.', '_').replace('<', '').replace('>', '')}_arguments",
            __config__=ConfigDict(extra="forbid", protected_namespaces=()),
            **fields,
        )
    except (PydanticSchemaGenerationError, PydanticUserError, NameError) as exc:
        raise TypeError(f"tool {label}: its parameters have no JSON schema: {exc}") from exc


def _has_description(annotation: Any) -> bool:
    """Whether ``annotation`` is ``Annotated[..., Field(description=...)]``."""
    if typing.get_origin(annotation) is not typing.Annotated:
        return False
    return any(isinstance(m, FieldInfo) and m.description for m in annotation.__metadata__)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph (on one line) and the ``Args:`` section's descriptions."""
    lines = doc.splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        summary.append(line.strip())
    arg_docs: dict[str, str] = {}
    in_args = False
    current: str | None = None
    arg_indent = 0
    for line in lines:
        stripped = line.strip()
        if not line.startswith((" ", "\t")) and stripped:
            in_args = stripped in ("Args:", "Arguments:", "Parameters:")
            current = None
            continue
        if not in_args or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        matched = _ARG_LINE.match(stripped)
        if matched and (current is None or indent <= arg_indent):
            current, arg_indent = matched.group(1).lstrip("*"), indent
            arg_docs[current] = matched.group(2).strip()
        elif current is not None:  # a continuation line
            arg_docs[current] = f"{arg_docs[current]} {stripped}".strip()
    return " ".join(summary), {k: v for k, v in arg_docs.items() if v}


def _openai_parameters(schema: dict[str, Any], label: str) -> dict[str, Any]:
    """pydantic's schema made plain for function calling: no ``title`` noise, nested
    models inlined (not every provider's schema dialect follows ``$ref``), and always
    ``type``, ``properties`` and ``required``."""
    defs = schema.pop("$defs", {})

    def plain(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [plain(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = ref.removeprefix("#/$defs/")
            if target in seen:
                raise TypeError(
                    f"tool {label}: the recursive type {target} cannot be a tool argument"
                )
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            return {**plain(defs[target], (*seen, target)), **plain(siblings, seen)}
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {prop: plain(sub, seen) for prop, sub in value.items()}
            else:
                out[key] = plain(value, seen)
        return out

    parameters: dict[str, Any] = plain(schema, ())
    return {
        "type": "object",
        "properties": parameters.pop("properties", {}),
        "required": parameters.pop("required", []),
        **{k: v for k, v in parameters.items() if k != "type"},
    }


def _invalid_arguments_message(name: str, exc: ValidationError) -> str:
    """What the model sent wrong, one problem per line: where and what, never the values
    (they may be long) and never a traceback."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        kind = error["type"]
        if kind == "json_invalid":
            problems.append("the arguments are not valid JSON")
        elif kind == "model_type":
            problems.append("the arguments must be a JSON object")
        elif kind == "missing":
            problems.append(f"{where}: required argument missing")
        elif kind == "extra_forbidden":
            problems.append(f"{where}: unknown argument")
        else:
            problems.append(f"{where}: {error['msg']}" if where else error["msg"])
    listed = "\n".join(f"- {problem}" for problem in problems)
    return f"Error: invalid arguments for tool {name!r}; nothing was run.\n{listed}"
