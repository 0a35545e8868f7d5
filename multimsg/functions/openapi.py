"""GET /openapi.json: the OpenAPI 3 description of this API (``multimsg/openapi.json``).

The file ships in the package and is served as it is; the tests fuzz the
running server against it (tests/test_schemathesis.py), so it must describe
what the handlers do, status codes and content types included.
"""

import json
from functools import lru_cache
from importlib import resources

import functions_framework

from .http import Reply, endpoint

__all__ = ["openapi", "spec"]


@lru_cache(maxsize=1)
def spec() -> dict:
    return json.loads(resources.files("multimsg").joinpath("openapi.json").read_text(encoding="utf-8"))


@functions_framework.http
@endpoint("GET")
def openapi(request):
    return Reply("", spec(), always_json=True)
