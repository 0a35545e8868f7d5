"""GET /key: the server's RSA public key, PEM (SubjectPublicKeyInfo)."""

import functions_framework

from .http import Reply, endpoint, gateway


@functions_framework.http
@endpoint("GET")
def key(request):
    pem = gateway().public_key()
    return Reply(pem, {"key": pem})
