"""WhatsApp template messages: the uploaded JSON document and the body it becomes.

Outside the 24-hour customer-service window WhatsApp only delivers approved
templates (a free-form send fails with 131047), so a business that starts a
conversation sends one. The upload for type ``template`` is a JSON document::

    {"name": "order_update", "language": "es_AR", "components": [...]}

``components`` is optional and in the Cloud API's own shape (a list of
objects with a ``type``, e.g. ``header``, ``body``, ``button``, and their
``parameters``); it is passed through. ``load_template(path)`` checks the
document (``InvalidInput`` with the reason) and returns the ``template``
object of the message body, with ``language`` as ``{"code": ...}``. A document
nested deeper than ``MAX_DEPTH`` arrays and objects is refused before it is
parsed (the parser would otherwise recurse until Python's limit).
"""

from __future__ import annotations

import json
import re

from ..content import Content
from ..errors import InvalidInput

__all__ = ["load_template", "TEMPLATE_MAX_BYTES", "MAX_DEPTH"]

TEMPLATE_MAX_BYTES = 64 * 1024
MAX_DEPTH = 32  # a real template is about 5 deep (components, parameters, their objects)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")
_NAME = re.compile(r"[a-z0-9_]{1,512}")  # Meta: lowercase letters, digits and underscores
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")  # Meta's codes: "en", "en_US", "es_AR", "fil"
_KEYS = {"name", "language", "components"}


def load_template(content: Content) -> dict:
    """The ``template`` object of a WhatsApp message, from the uploaded JSON document."""
    try:
        text = content.read(TEMPLATE_MAX_BYTES + 1).decode("utf-8")
        _check_depth(text)
        document = json.loads(text)
    except UnicodeDecodeError:
        raise InvalidInput("template must be a UTF-8 JSON document") from None
    except RecursionError:
        raise InvalidInput(f"template is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise InvalidInput(f"template is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidInput('template must be a JSON object like {"name": "order_update", "language": "es_AR"}')
    unknown = sorted(set(document) - _KEYS)
    if unknown:
        raise InvalidInput(f"template has unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; it takes name, language, components")
    name, language = document.get("name"), document.get("language")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput("template 'name' must be the approved template's name: lowercase letters, digits and underscores")
    if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
        raise InvalidInput("template 'language' must be a language code such as \"en\" or \"es_AR\"")
    template = {"name": name, "language": {"code": language, "policy": "deterministic"}}  # policy: required by Meta's spec
    if "components" in document:
        template["components"] = _components(document["components"])
    return template


def _check_depth(text: str) -> None:
    """InvalidInput if ``text`` nests arrays and objects deeper than MAX_DEPTH (brackets in strings do not count)."""
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_DEPTH:
            raise InvalidInput(f"template is nested too deeply (at most {MAX_DEPTH} levels)")


def _components(components) -> list:
    if not isinstance(components, list):
        raise InvalidInput("template 'components' must be a list")
    for index, component in enumerate(components):
        where = f"template components[{index}]"
        if not isinstance(component, dict) or not isinstance(component.get("type"), str) or not component["type"]:
            raise InvalidInput(f"{where} must be an object with a 'type' (header, body, button...)")
        parameters = component.get("parameters", [])
        if not isinstance(parameters, list) or not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in parameters):
            raise InvalidInput(f"{where}.parameters must be a list of objects, each with a 'type'")
    return components
