"""JSON Schema reduced to the OpenAPI subset Gemini accepts (tool parameters, json_schema).

Other keywords are dropped, local ``$ref`` inlined, ``oneOf`` read as ``anyOf``, a null type
as ``nullable``; what the subset cannot express is refused with a 400 naming the place.
"""

from __future__ import annotations

from typing import Any

from ..errors import UpstreamUnsupportedError

# Schema keywords copied as they are (type, properties, required, items and anyOf are
# rebuilt); Gemini also takes title, default and example, but they only document.
_BOUNDS = [f"{end}{what}" for end in ("min", "max") for what in ("Items", "Length", "Properties")]
_SCHEMA_KEYWORDS = ["description", "minimum", "maximum", "pattern", "propertyOrdering", *_BOUNDS]
_FORMATS = {
    "STRING": ("enum", "date-time"),
    "NUMBER": ("float", "double"),
    "INTEGER": ("int32", "int64"),
}


def gemini_schema(schema: dict[str, Any], where: str) -> dict[str, Any]:
    """JSON Schema ``schema`` in Gemini's OpenAPI subset; ``where`` names it in errors."""
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    return _reduce(schema, definitions, (), where)


def _reduce(node: Any, defs: dict[str, Any], refs: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise _unexpressible(where, "is not a schema object")
    node, refs = _resolve(node, defs, refs, where)
    out, nullable = _union(node, defs, refs, where)
    enum = [node["const"]] if "const" in node else node.get("enum")
    if enum and all(isinstance(value, str) for value in enum):  # Gemini's enums are strings
        out["enum"] = list(enum)
    kind = _own_type(node, out)
    if kind == "OBJECT":
        properties = node.get("properties")
        if not properties:
            raise _unexpressible(where, "is an object without properties")
        out["properties"] = {
            name: _reduce(value, defs, refs, f"{where}.properties.{name}")
            for name, value in properties.items()
        }
        required = [name for name in node.get("required", []) if name in properties]
        if required:
            out["required"] = required
    elif kind == "ARRAY":
        if not isinstance(node.get("items"), dict):
            raise _unexpressible(where, "is an array without one items schema")
        out["items"] = _reduce(node["items"], defs, refs, f"{where}.items")
    if kind:
        out["type"] = kind
    if "type" not in out and "anyOf" not in out:
        raise _unexpressible(where, "has no type")
    if node.get("format") in _FORMATS.get(out.get("type", ""), ()):
        out["format"] = node["format"]
    out.update((key, node[key]) for key in _SCHEMA_KEYWORDS if key in node)
    if nullable:
        out["nullable"] = True
    return out


def _union(
    node: dict[str, Any], defs: dict[str, Any], refs: tuple[str, ...], where: str
) -> tuple[dict[str, Any], bool]:
    """The variants of ``node`` (anyOf, oneOf, a list of types) and whether null is one."""
    variants = list(node.get("anyOf") or node.get("oneOf") or [])
    kind = node.get("type")
    if isinstance(kind, list):  # JSON Schema's ["string", "null"]
        variants += [{"type": each} for each in kind]
    nullable = bool(node.get("nullable"))
    reduced = []
    for number, variant in enumerate(variants):
        if isinstance(variant, dict) and variant.get("type") == "null":
            nullable = True
        else:
            reduced.append(_reduce(variant, defs, refs, f"{where}.anyOf[{number}]"))
    if len(reduced) == 1:  # a union with null only: that schema, made nullable
        return dict(reduced[0]), nullable
    return ({"anyOf": reduced} if reduced else {}), nullable


def _own_type(node: dict[str, Any], out: dict[str, Any]) -> str | None:
    """The type ``node`` states or implies; None when only its variants tell."""
    kind = node.get("type")
    own: str | None
    if isinstance(kind, str) and kind != "null":
        own = kind.upper()
    elif "properties" in node:
        own = "OBJECT"
    elif "items" in node:
        own = "ARRAY"
    else:
        own = "STRING" if "enum" in out else None
    # {"type": "object", "oneOf": [...]}: the variants describe the object.
    return None if own == "OBJECT" and "anyOf" in out and "properties" not in node else own


def _resolve(
    node: dict[str, Any], defs: dict[str, Any], refs: tuple[str, ...], where: str
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``node`` with its local ``$ref``, or its ``allOf`` of one schema, merged in."""
    if "$ref" in node:
        ref = node["$ref"]
        name = ref.rpartition("/")[2]
        if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in defs:
            raise _unexpressible(where, f"uses $ref '{ref}', which is not a local definition")
        if name in refs:
            raise _unexpressible(where, f"uses $ref '{ref}' recursively")
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return _resolve({**defs[name], **siblings}, defs, (*refs, name), where)
    if "allOf" in node:
        if len(node["allOf"]) != 1 or not isinstance(node["allOf"][0], dict):
            raise _unexpressible(where, "uses allOf with several schemas")
        siblings = {key: value for key, value in node.items() if key != "allOf"}
        return _resolve({**node["allOf"][0], **siblings}, defs, refs, where)
    return node, refs


def _unexpressible(where: str, problem: str) -> UpstreamUnsupportedError:
    return UpstreamUnsupportedError(
        f"{where} {problem}, which Gemini's schema subset cannot express",
        param=where.split(".")[0],
    )
