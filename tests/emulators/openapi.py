"""Validation of WhatsApp `/messages` request bodies against Meta's OpenAPI spec.

Owns: loading the vendored spec (tests/reference/whatsapp-business-messaging-api_v23.0.yaml),
turning the request-body schema of `POST /{Version}/{Phone-Number-ID}/messages` into plain
JSON Schemas that `jsonschema` can check, and `validate_message()`.

The 1 MB YAML takes ~0.5 s to parse, so the schemas are extracted lazily, once per process,
and cached as JSON in the temp directory under a name keyed by the spec's sha256 (and by
`_CACHE_FORMAT`, to be bumped whenever the extraction below changes).

A body is first checked by jsonschema-rs (compiled Rust, a few microseconds, where the
`jsonschema` package takes a quarter of a millisecond and 0.1 s of CPU to import); only a body
it does not accept goes to `jsonschema`, which decides and words the errors.  So the errors are
the same as before, and a valid body costs the emulator almost nothing;
tests/test_whatsapp_openapi.py checks that the two agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema_rs

if TYPE_CHECKING:
    import jsonschema

__all__ = ["SPEC_PATH", "MESSAGES_PATH", "extract_schemas", "message_schemas", "validate_message"]

SPEC_PATH = Path(__file__).resolve().parents[1] / "reference" / "whatsapp-business-messaging-api_v23.0.yaml"
MESSAGES_PATH = "/{Version}/{Phone-Number-ID}/messages"
_CACHE_FORMAT = 2

# Request fields that Meta documents for `/messages` but that the vendored spec's schemas leave
# out (with `additionalProperties: false`, a body carrying them would be rejected).
# biz_opaque_callback_data: the Cloud API documents it as a string of at most 512 characters.
_DOCUMENTED_EXTRAS: dict[str, dict[str, Any]] = {
    "biz_opaque_callback_data": {"type": "string", "maxLength": 512},
}

# `required` entries the spec's schemas declare but Meta's own request examples (in the same
# file) leave out, and that the Cloud API documentation treats as optional: `recipient_type`
# (§2.2 marks only `messaging_product` and `to` as required).  The template language's `policy`
# stays required: the gateway sends `"policy": "deterministic"`.
_RELAXED_REQUIRED: dict[str, str] = {"BaseMessageProperties": "recipient_type"}

# Keys that only annotate a schema; differing values of these never block a merge.
_ANNOTATIONS = {"description", "example", "examples", "title"}

_lock = threading.Lock()
_schemas: dict[str, Any] | None = None
_validators: dict[str, jsonschema.protocols.Validator] = {}
_checkers: dict[str, Any] = {}  # jsonschema_rs validators, by message type ("" = the whole oneOf)


def _load_spec(path: Path) -> dict[str, Any]:
    import yaml  # imported here: only needed when the cache is cold

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open("rb") as handle:
        return yaml.load(handle, Loader=loader)


def _lookup(spec: dict[str, Any], ref: str) -> Any:
    target: Any = spec
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def _resolve(node: Any, spec: dict[str, Any], stack: tuple[str, ...] = ()) -> Any:
    """Return `node` with every local `$ref` inlined and every `allOf` merged."""
    if isinstance(node, list):
        return [_resolve(item, spec, stack) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/") or ref in stack:
            raise ValueError(f"cannot inline $ref {ref!r} (external or recursive)")
        resolved = _resolve(_lookup(spec, ref), spec, stack + (ref,))
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return {**resolved, **_resolve(siblings, spec, stack)} if siblings else resolved
    out = {key: _resolve(value, spec, stack) for key, value in node.items()}
    return _merge_all_of(out) if "allOf" in out else out


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    """Fold the `allOf` branches of `schema` into one object schema.

    The spec's message schemas are `allOf: [BaseMessageProperties, {additionalProperties: false,
    properties: {<type-specific>}}]`.  Under JSON Schema, `additionalProperties: false` in the
    second branch only sees that branch's own `properties`, so a strict validator rejects even
    correct bodies (`to`, `messaging_product`, ... count as "additional").  Merging the branches'
    `properties` and `required` into one schema gives the meaning the spec intends.
    """
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    properties: dict[str, Any] = dict(merged.pop("properties", {}))
    required: list[str] = list(merged.pop("required", []))
    for branch in schema["allOf"]:
        for name, prop in branch.get("properties", {}).items():
            properties[name] = _merge_property(properties[name], prop) if name in properties else prop
        required += [name for name in branch.get("required", []) if name not in required]
        for key, value in branch.items():
            if key in ("properties", "required"):
                continue
            if key == "additionalProperties" and (value is False or merged.get(key) is False):
                merged[key] = False
                continue
            if key in merged and merged[key] != value and key not in _ANNOTATIONS:
                raise ValueError(f"cannot merge allOf: conflicting {key!r}")
            merged.setdefault(key, value)
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = required
    return merged


def _merge_property(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Combine two schemas given for the same property by different allOf branches."""
    clash = any(k in first and first[k] != v and k not in _ANNOTATIONS for k, v in second.items())
    return {"allOf": [first, second]} if clash else {**first, **second}


def extract_schemas(spec: dict[str, Any]) -> dict[str, Any]:
    """Build `{"message": <whole body schema>, "by_type": {<type>: <schema>}}` from the spec.

    The body schema is a `oneOf` over the message kinds with a `discriminator` on `type`;
    `by_type` holds the branch the discriminator names, so a body is checked against the
    schema of its own type and errors are about that type only.
    """
    components = dict(spec["components"]["schemas"])
    for name, field in _RELAXED_REQUIRED.items():
        schema = components[name]
        components[name] = {**schema, "required": [r for r in schema.get("required", []) if r != field]}
    spec = {**spec, "components": {**spec["components"], "schemas": components}}
    body = spec["paths"][MESSAGES_PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]
    union = body
    while "$ref" in union:
        union = _lookup(spec, union["$ref"])
    message = _resolve(body, spec)
    mapping = union.get("discriminator", {}).get("mapping", {})
    by_type = {kind: _resolve({"$ref": ref}, spec) for kind, ref in mapping.items()}
    for schema in [message, *by_type.values()]:
        for branch in schema.get("oneOf", [schema]):
            for name, extra in _DOCUMENTED_EXTRAS.items():
                branch.setdefault("properties", {}).setdefault(name, extra)
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(message)
    return {"message": message, "by_type": by_type}


def _cache_file(digest: str) -> Path:
    return Path(tempfile.gettempdir()) / f"multimsg-wa-messages-schema-{digest[:16]}-v{_CACHE_FORMAT}.json"


def message_schemas() -> dict[str, Any]:
    """The extracted schemas; loaded once per process, from the JSON cache when it is warm."""
    global _schemas
    with _lock:
        if _schemas is None:
            digest = hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest()
            cache = _cache_file(digest)
            try:
                _schemas = json.loads(cache.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                _schemas = extract_schemas(_load_spec(SPEC_PATH))
                tmp = cache.with_suffix(f".{os.getpid()}.tmp")
                try:
                    tmp.write_text(json.dumps(_schemas), encoding="utf-8")
                    os.replace(tmp, cache)
                except OSError:
                    pass  # the cache is an optimisation only
        return _schemas


def _schema(key: str) -> Any:
    schemas = message_schemas()
    return schemas["by_type"][key] if key else schemas["message"]


def _validator(kind: str | None) -> jsonschema.protocols.Validator:
    """The `jsonschema` validator: the reference, and the wording of the errors."""
    import jsonschema

    key = kind or ""
    schema = _schema(key)
    with _lock:
        if key not in _validators:
            _validators[key] = jsonschema.Draft202012Validator(schema)
        return _validators[key]


def _checker(kind: str | None) -> Any:
    """The jsonschema-rs validator of the same schema.  `format` is left unchecked, as
    `jsonschema` does without a format checker."""
    key = kind or ""
    schema = _schema(key)
    with _lock:
        if key not in _checkers:
            _checkers[key] = jsonschema_rs.Draft202012Validator(schema, validate_formats=False)
        return _checkers[key]


def _describe(error: jsonschema.ValidationError) -> str:
    path = "/".join(str(part) for part in error.absolute_path) or "(body)"
    message = error.message
    if error.validator in ("oneOf", "anyOf"):  # the default text quotes every alternative schema
        if "is valid under each of" in message:
            message = "matches more than one of the allowed forms"
        else:
            reasons = "; ".join(sorted({sub.message for sub in error.context}))
            message = f"matches none of the allowed forms ({reasons})"
    return f"{path}: {message if len(message) <= 300 else message[:297] + '...'}"


def validate_message(body: Any) -> list[str]:
    """Check a `/messages` request body against the spec; return the problems, [] when valid."""
    if isinstance(body, dict):
        kind, known = body.get("type"), message_schemas()["by_type"]
        if "type" not in body:
            return ["(body): 'type' is a required property"]
        if not isinstance(kind, str) or kind not in known:
            return [f"type: {kind!r} is not one of {sorted(known)}"]
    else:
        kind = None  # not an object: the whole oneOf reports it
    try:
        if _checker(kind).is_valid(body):
            return []
    except ValueError:
        pass  # a value jsonschema-rs cannot take in: the reference decides
    errors = _validator(kind).iter_errors(body)
    return [_describe(error) for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])]
