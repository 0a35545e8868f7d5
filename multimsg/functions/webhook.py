"""GET/POST /webhook/<serv>: a platform's webhook (WhatsApp: the verification handshake, then signed status notifications).

GET answers Meta's handshake (the challenge, or 403). POST needs a valid
``X-Hub-Signature-256`` over the raw body (401 without, 403 wrong; nothing is
stored then); a well-signed notification is answered 200 at once, whatever it
holds (unknown wamids, malformed statuses, other fields are skipped).
"""

import functions_framework

from ..errors import NotConfigured, NotFound
from ..gateway import gateway
from ..services import get_service
from ..webhooks import handshake, statuses, verify_signature
from .http import Reply, endpoint

MAX_NOTIFICATION = 1024 * 1024  # Meta batches up to 1,000 updates in one notification
SERVICES = ("wpp1",)  # services whose platform calls a webhook


def _service(request):
    serv = request.path.rstrip("/").rsplit("/", 1)[-1] if request.path.rstrip("/").count("/") >= 2 else "wpp1"
    if serv not in SERVICES:
        raise NotFound(f"no webhook for service {serv!r}; webhooks: {', '.join(SERVICES)}")
    return get_service(serv)


@functions_framework.http
@endpoint("GET", "POST")
def webhook(request):
    service = _service(request)
    if request.method == "GET":
        if not getattr(service, "verify_token", ""):
            raise NotConfigured("MULTIMSG_WPP1_VERIFY_TOKEN is not set on this server")
        challenge = handshake(request.args, service.verify_token)
        return Reply(challenge, {}, content_type="text/plain; charset=utf-8")
    request.max_content_length = MAX_NOTIFICATION
    raw = request.get_data(cache=True)
    if not getattr(service, "app_secret", ""):
        raise NotConfigured("MULTIMSG_WPP1_APP_SECRET is not set on this server")
    verify_signature(raw, request.headers.get("X-Hub-Signature-256"), service.app_secret)
    changed = gateway().receive(statuses(raw))
    return Reply("ok", {"ok": True, "changed": changed})
