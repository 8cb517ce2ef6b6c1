"""Validators compiled from the OpenAPI document's components, so the document is the
only description of a valid request (no second, hand-written one to drift from it).

The batch is checked in two steps, both from the document: the request's shape
(`SubmitRequest` with its items left open) refuses the whole request, and each
message (`Message`) refuses only itself, with the field and the rule it broke.
fastjsonschema (pure Python, in the Powertools layer's validation extra) compiles
them; the schemas keep to what JSON Schema draft 7 and OpenAPI 3.1 share.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastjsonschema

DOCUMENT = "ingress_openapi.json"


@dataclass(frozen=True, slots=True)
class SchemaRefusal:
    field: str
    rule: str
    reason: str


@functools.cache
def document() -> dict[str, Any]:
    text = resources.files("quiver.data").joinpath(DOCUMENT).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _compile(name: str, edit: Callable[[dict[str, Any]], None] | None = None
             ) -> Callable[[Any], Any]:
    components = document()["components"]
    schema = copy.deepcopy(components["schemas"][name])
    if edit is not None:
        edit(schema)
    # The component's $refs point into the document: give them its components.
    schema["components"] = components
    validate: Callable[[Any], Any] = fastjsonschema.compile(
        schema, formats={"byte": _is_base64})
    return validate


@functools.cache
def _batch_validator() -> Callable[[Any], Any]:
    def open_items(schema: dict[str, Any]) -> None:
        del schema["properties"]["messages"]["items"]
    return _compile("SubmitRequest", open_items)


@functools.cache
def _message_validator() -> Callable[[Any], Any]:
    return _compile("Message")


def _refusal(exc: fastjsonschema.JsonSchemaValueException) -> SchemaRefusal:
    # fastjsonschema names the value "data.to[0]" or "data.headers.X": the field is
    # what follows "data", as the client wrote it.
    name = str(exc.name or "data")
    field = name[len("data"):].lstrip(".") or "message"
    rule = str(exc.rule or "schema")
    if rule == "oneOf":
        return SchemaRefusal("raw", "schema.oneOf", "exactly one of raw, or subject with "
                             "text and/or html (and headers)")
    message = str(exc.message).replace(name, field, 1)
    return SchemaRefusal(field, f"schema.{rule}", message)


def batch_refusal(request: Any) -> SchemaRefusal | None:
    """Why the request is not a batch at all (refused whole), or None."""
    try:
        _batch_validator()(request)
    except fastjsonschema.JsonSchemaValueException as exc:
        return _refusal(exc)
    return None


def message_refusal(message: Any) -> SchemaRefusal | None:
    """Why one message of the batch breaks the document's `Message`, or None."""
    try:
        _message_validator()(message)
    except fastjsonschema.JsonSchemaValueException as exc:
        return _refusal(exc)
    return None
