"""GET /callback-key: the Ed25519 public key that signs status callbacks (PEM; JSON adds Standard Webhooks' ``whpk_`` form)."""

import functions_framework

from ..gateway import gateway
from .http import Reply, endpoint


@functions_framework.http
@endpoint("GET")
def callback_key(request):
    pem, whpk = gateway().callback_key()
    return Reply(pem, {"key": pem, "whpk": whpk})
