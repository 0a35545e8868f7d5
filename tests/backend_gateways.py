"""A real gateway on each backend: ``backend_gateway`` is parametrized over the embedded store and Redis.

``make(name, env)`` starts a runner (``tests/gatewayproc.py``) whose data
folder is ``tmp_path/name``; on the Redis parameter every runner of the test
shares one real redis-server database (``tests/redis_support.py``), with the
server keys sealed in it (the session's ``MULTIMSG_KEY_SEAL``, ``tests/conftest.py``). A test module
imports ``backend_gateway`` and the ``redis_server``/``redis_url`` fixtures.
"""

from __future__ import annotations

import pytest

__all__ = ["backend_gateway", "BACKEND_PARAMS"]

BACKEND_PARAMS = ["embedded", "redis"]


@pytest.fixture(params=BACKEND_PARAMS)
def backend_gateway(request, make_gateway):
    """``make(name="home", env=None) -> Gateway`` on this parameter's backend."""
    extra = {}
    if request.param == "redis":
        extra = {"MULTIMSG_BACKEND": request.getfixturevalue("redis_url")}

    def make(name: str = "home", env: dict[str, str] | None = None, **kwargs):
        return make_gateway(name, {**extra, **(env or {})}, **kwargs)

    make.backend = request.param
    return make
