"""OpenAI's ``response_format`` as onnxruntime-genai guidance: which grammar constrains a row's tokens.

- ``{"type": "text"}`` (or none): no guidance.
- ``{"type": "json_object"}``: any JSON object (the JSON schema ``{"type": "object"}``).
- ``{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}``: a JSON value that
  validates against ``schema``. The grammar is enforced whether ``strict`` is true or false: a stricter answer than
  OpenAI promises for ``strict: false``, never a looser one.

The value may be a dict (a chat request in-process, the endpoint) or its JSON text (a ``/invocations`` column or the
``response_format`` param, whose signature type is a string). Whether llguidance can compile the schema is checked
where the model is (``generation.check_guidance``). Standard library only, like every file of this package.
"""

from __future__ import annotations

import json
from typing import Any

JSON_SCHEMA = "json_schema"
TYPES = ("text", "json_object", JSON_SCHEMA)
SCHEMA_FIELDS = ("name", "schema", "strict", "description")
ANY_OBJECT = {"type": "object"}


class FormatError(ValueError):
    """A ``response_format`` this model cannot read; the message says what is accepted."""


def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise FormatError("must be an object or its JSON text; got text that is not JSON") from None
    if not isinstance(value, dict):
        raise FormatError(f"must be an object with 'type' ({', '.join(TYPES)}); got {type(value).__name__}")
    return value


def _schema(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise FormatError(f"json_schema must be an object with {', '.join(SCHEMA_FIELDS)}; got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SCHEMA_FIELDS))
    if unknown:
        raise FormatError(f"json_schema has unknown field(s) {unknown}; accepted: {', '.join(SCHEMA_FIELDS)}")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise FormatError("json_schema.name must be a non-empty string")
    if not isinstance(spec.get("strict", False), bool | None):
        raise FormatError("json_schema.strict must be true or false")
    schema = spec.get("schema", ANY_OBJECT)
    if not isinstance(schema, dict):
        raise FormatError(f"json_schema.schema must be a JSON schema object; got {type(schema).__name__}")
    return schema


def guidance_of(value: Any) -> tuple[str, str] | None:
    """The ``(kind, data)`` of ``params.set_guidance`` for a ``response_format``; ``None`` for plain text."""
    if value is None or value == "":
        return None
    fields = _object(value)
    kind = fields.get("type")
    if kind not in TYPES:
        raise FormatError(f"type must be one of {', '.join(TYPES)}; got {kind!r}")
    extra = sorted(set(fields) - ({"type", JSON_SCHEMA} if kind == JSON_SCHEMA else {"type"}))
    if extra:
        raise FormatError(f"type {kind!r} takes no field(s) {extra}")
    if kind == "text":
        return None
    schema = ANY_OBJECT if kind == "json_object" else _schema(fields.get(JSON_SCHEMA))
    return JSON_SCHEMA, json.dumps(schema)
